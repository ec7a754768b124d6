// sandstorm agent runner: runs one Claude Agent SDK query inside a sandbox.
//
// What it speaks with sandstorm (its environment, the gateway's socket or
// TCP address, the documents the gateway serves it, its stdout lines, its
// exit status) is described once, in the Go package runnerproto; the
// PROTOCOL block below is generated from it.
//
// Input: the model gateway's Unix socket (PROTOCOL.env.socket, default in
// the session directory PROTOCOL.session_dir), which also serves the run's
// JSON config (PROTOCOL.docs.config, with the session token: no file holds
// it at rest), or a config file named by PROTOCOL.env.config_file. A sandbox
// on another host (a Kubernetes Pod) reaches the gateway over TCP instead
// (PROTOCOL.env.gateway_addr, TLS when PROTOCOL.env.gateway_ca holds the
// CA's PEM): each connection opens with the PROTOCOL.hello line. A tiny
// forwarder on 127.0.0.1 gives the Claude Code CLI an HTTP base URL that
// reaches the gateway. The CLI authenticates with the per-session token
// (PROTOCOL.env.token), which the gateway swaps for the real credential; no
// real key is ever in the sandbox.
//
// Output: exactly one JSON line per SDK message on stdout and nothing else
// (plus, when the runner itself fails, one line {"type":"error",...} with a
// code of PROTOCOL.error_codes). Diagnostics go to stderr. Secrets are never
// printed.
//
// Exit status (PROTOCOL.exit): succeeded when the final result message has
// subtype "success" and is_error false; failed otherwise (bad config, agent
// error, SDK failure); signal_base+signal after SIGTERM, SIGINT or SIGHUP
// aborted the query.
//
// With PROTOCOL.env.timings=1 it also prints, on stderr, when each step of
// its start was reached (PROTOCOL.timing_prefix, the phase, the Unix time in
// ms), for the cold-start breakdown of make bench.
//
// Only Node's standard library and the SDK are used.

import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import process from 'node:process';
import tls from 'node:tls';

// ---- protocol (generated from package runnerproto: do not edit) -----------
// `go test ./images/agentimage -run TestRunnerProtocolBlock -update` writes it.
const PROTOCOL = {
  "env": {
    "token": "SANDSTORM_MODEL_TOKEN",
    "gateway_addr": "SANDSTORM_GATEWAY_ADDR",
    "gateway_ca": "SANDSTORM_GATEWAY_CA",
    "gateway_egress": "SANDSTORM_GATEWAY_EGRESS",
    "egress_ca": "SANDSTORM_EGRESS_CA",
    "wait": "SANDSTORM_RUNNER_WAIT",
    "timings": "SANDSTORM_RUNNER_TIMINGS",
    "socket": "SANDSTORM_MODEL_SOCKET",
    "config_file": "SANDSTORM_RUNNER_CONFIG",
    "workspace": "SANDSTORM_WORKSPACE",
    "claude_executable": "SANDSTORM_CLAUDE_EXECUTABLE"
  },
  "session_dir": {
    "mount": "/run/sandstorm",
    "model_socket": "model.sock",
    "egress_socket": "egress.sock",
    "egress_ca": "ca.pem"
  },
  "default_workspace": "/home/user",
  "docs": {
    "config": "/sandstorm/runner.json",
    "warm": "/sandstorm/warm.json",
    "files": "/sandstorm/files.json",
    "token_header": "x-api-key"
  },
  "hello": {
    "magic": "SANDSTORM/1",
    "model": "model",
    "egress": "egress"
  },
  "config_fields": [
    "prompt",
    "model",
    "max_turns",
    "system_prompt",
    "output_format",
    "agents",
    "mcp_servers",
    "allowed_tools",
    "include_partial_messages"
  ],
  "error_type": "error",
  "result_type": "result",
  "error_codes": [
    "invalid_config",
    "model_unreachable",
    "forwarder_failed",
    "sdk_missing",
    "sdk_error",
    "no_result",
    "aborted",
    "unencodable_message",
    "internal"
  ],
  "timing_prefix": "sandstorm-runner timing ",
  "timing_phases": [
    "runner_started",
    "config_received",
    "sdk_loaded",
    "query_called",
    "settled",
    "released"
  ],
  "exit": {
    "succeeded": 0,
    "failed": 1,
    "signal_base": 128
  }
};
// ---- end of protocol -------------------------------------------------------

// The config must arrive well before anything else can happen.
const CONFIG_TIMEOUT_MS = 10000;
const DEFAULT_SOCKET = path.join(PROTOCOL.session_dir.mount, PROTOCOL.session_dir.model_socket);
const DEFAULT_MAX_RETRIES = '2';
const DEFAULT_CLAUDE_CONFIG_DIR = '/tmp/sandstorm-claude';
// How long an aborted query may take to wind down before the runner exits anyway.
const ABORT_GRACE_MS = 5000;

// Nothing but SDK messages may reach stdout: route console output to stderr
// before anything (the SDK included) can use it.
for (const name of ['log', 'info', 'debug', 'dir', 'table']) {
  console[name] = (...args) => console.error(...args);
}

// ---- secrets ---------------------------------------------------------------

// Every credential-like value the runner can see, redacted from anything it
// prints (stdout lines, stderr diagnostics, the CLI's stderr).
const secrets = new Set();
for (const name of [
  PROTOCOL.env.token,
  'ANTHROPIC_API_KEY',
  'ANTHROPIC_AUTH_TOKEN',
  'CLAUDE_CODE_OAUTH_TOKEN',
]) {
  const v = process.env[name];
  if (v && v.length >= 4) secrets.add(v);
}

function redactSecrets(s) {
  for (const v of secrets) {
    if (s.includes(v)) s = s.split(v).join('[redacted]');
  }
  // Anthropic keys by shape, in case one arrives by another way.
  return s.replace(/sk-ant-[A-Za-z0-9_-]+/g, 'sk-ant-[redacted]');
}

// scrub is redactSecrets plus env-like and header-like assignments: for
// error messages and stderr, where such text is never needed verbatim.
function scrub(text) {
  let s = redactSecrets(String(text));
  s = s.replace(
    /\b([A-Za-z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)[A-Za-z0-9_]*)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s"',;}]+)/gi,
    '$1$2[redacted]',
  );
  s = s.replace(
    /\b(x-api-key|authorization|proxy-authorization)(["']?\s*[:=]\s*["']?)(?:(?:Bearer|Basic)\s+)?[^\s"',;}]+/gi,
    '$1$2[redacted]',
  );
  return s;
}

function errorText(err) {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

function logErr(msg) {
  process.stderr.write(`runner: ${scrub(msg)}\n`);
}

// ---- stdout ----------------------------------------------------------------

function emit(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
  } catch (err) {
    line = JSON.stringify({
      type: PROTOCOL.error_type,
      code: 'unencodable_message',
      message: scrub(`message of type ${obj && obj.type} could not be encoded: ${errorText(err)}`),
    });
  }
  // U+2028/U+2029 are legal in JSON strings but some readers split lines on
  // them: escape them so that "one line" holds for every reader.
  line = redactSecrets(line).replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
  process.stdout.write(line + '\n');
}

function emitError(code, message) {
  emit({ type: PROTOCOL.error_type, code, message: scrub(message) });
}

// ---- config ----------------------------------------------------------------

class ConfigError extends Error {}

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// Each field: its check, and the SDK option it becomes.
const FIELDS = {
  prompt: {
    option: null,
    check: (v) => (typeof v === 'string' && v.trim() !== '') || 'must be a non-empty string',
  },
  model: {
    option: 'model',
    check: (v) => (typeof v === 'string' && v !== '') || 'must be a non-empty string',
  },
  max_turns: {
    option: 'maxTurns',
    check: (v) => (Number.isInteger(v) && v > 0) || 'must be a positive integer',
  },
  system_prompt: {
    option: 'systemPrompt',
    check: (v) =>
      typeof v === 'string' ||
      (Array.isArray(v) && v.every((p) => typeof p === 'string')) ||
      (isPlainObject(v) && (v.type === 'preset' || v.type === 'custom')) ||
      'must be a string, an array of strings, or {type: "preset"|"custom", ...}',
  },
  output_format: {
    option: 'outputFormat',
    check: (v) =>
      (isPlainObject(v) && v.type === 'json_schema' && isPlainObject(v.schema)) ||
      'must be {"type": "json_schema", "schema": {...}}',
  },
  agents: {
    option: 'agents',
    check: (v) => {
      if (!isPlainObject(v)) return 'must be an object mapping agent names to definitions';
      for (const [name, def] of Object.entries(v)) {
        if (!isPlainObject(def) || typeof def.description !== 'string' || typeof def.prompt !== 'string') {
          return `agent ${JSON.stringify(name)} must be an object with string "description" and "prompt"`;
        }
      }
      return true;
    },
  },
  mcp_servers: {
    option: 'mcpServers',
    check: (v) => {
      if (!isPlainObject(v)) return 'must be an object mapping server names to configs';
      for (const [name, def] of Object.entries(v)) {
        if (!isPlainObject(def)) return `server ${JSON.stringify(name)} must be an object`;
      }
      return true;
    },
  },
  allowed_tools: {
    option: 'allowedTools',
    check: (v) => (Array.isArray(v) && v.every((t) => typeof t === 'string' && t !== '')) || 'must be an array of tool names',
  },
  include_partial_messages: {
    option: 'includePartialMessages',
    check: (v) => typeof v === 'boolean' || 'must be true or false',
  },
};

function readConfig(path) {
  let text;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : errorText(err);
    throw new ConfigError(`config ${path}: ${why} (set ${PROTOCOL.env.config_file} or mount it)`);
  }
  return parseConfig(text, path);
}

// fetchText GETs a document the gateway serves the session (timeout 0:
// none), rejecting on an HTTP status other than 200.
function fetchText(gw, token, where, timeout) {
  return new Promise((resolve, reject) => {
    const opts = {
      createConnection: () => gw.dial(PROTOCOL.hello.model),
      path: where,
      headers: { [PROTOCOL.docs.token_header]: token },
      timeout,
    };
    const req = http.get(opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode}`));
        else resolve(Buffer.concat(chunks).toString('utf8'));
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeout} ms`)));
    req.on('error', reject);
  });
}

// fetchConfig asks the gateway for the run's config over its socket (or,
// with warm, the warm sandbox's options). A warm sandbox's runner waits for
// its run's config as long as it takes: the gateway answers when a request
// has claimed the sandbox.
async function fetchConfig(gw, token, { warm = false, wait = false } = {}) {
  const where = warm ? PROTOCOL.docs.warm : PROTOCOL.docs.config;
  const source = `${gw.where}${where}`;
  let text;
  try {
    text = await fetchText(gw, token, where, wait ? 0 : CONFIG_TIMEOUT_MS);
  } catch (err) {
    throw new ConfigError(`config from ${source}: ${errorText(err)}`);
  }
  return parseConfig(text, source, warm);
}

function parseConfig(text, path, warm = false) {
  let cfg;
  try {
    cfg = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config ${path}: not valid JSON: ${errorText(err)}`);
  }
  if (!isPlainObject(cfg)) throw new ConfigError(`config ${path}: must be a JSON object`);
  for (const key of Object.keys(cfg)) {
    if (!Object.hasOwn(FIELDS, key)) {
      throw new ConfigError(`config ${path}: unknown field ${JSON.stringify(key)} (known: ${Object.keys(FIELDS).join(', ')})`);
    }
  }
  if (warm) delete cfg.prompt;
  else if (cfg.prompt === undefined) throw new ConfigError(`config ${path}: "prompt" is required`);
  for (const [key, f] of Object.entries(FIELDS)) {
    if (cfg[key] === undefined || (cfg[key] === null && key !== 'prompt')) continue;
    const ok = f.check(cfg[key]);
    if (ok !== true) throw new ConfigError(`config ${path}: "${key}" ${ok}`);
  }
  return cfg;
}

// ---- TCP -> Unix forwarder --------------------------------------------------

const SYSTEM_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';
const CA_BUNDLE = '/tmp/sandstorm-ca-bundle.pem';
const CA_VARS = ['SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'GIT_SSL_CAINFO'];

// trustEgressCA writes the system's bundle plus the egress CA where every
// tool is told to look (the root filesystem is read-only), and returns the
// variables that say so.
function trustEgressCA(caPath) {
  let system = '';
  try {
    system = fs.readFileSync(SYSTEM_BUNDLE, 'utf8');
  } catch {
    // No system bundle: the egress CA alone.
  }
  fs.writeFileSync(CA_BUNDLE, system + '\n' + fs.readFileSync(caPath, 'utf8'), { mode: 0o644 });
  const vars = { NODE_EXTRA_CA_CERTS: caPath };
  for (const name of CA_VARS) vars[name] = CA_BUNDLE;
  return vars;
}

function isSocket(p) {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

// gatewayFrom says how the gateway is reached: through its Unix socket,
// mounted into the sandbox (PROTOCOL.env.socket, the egress proxy's and
// its CA next to it), or, for a sandbox on another host, at its TCP address
// (PROTOCOL.env.gateway_addr host:port; TLS verified with the CA in
// PROTOCOL.env.gateway_ca when set), where every connection first names the
// session's token and the service. There the egress proxy is there when
// PROTOCOL.env.gateway_egress=1, its CA in PROTOCOL.env.egress_ca.
function gatewayFrom(env, token) {
  const names = PROTOCOL.env;
  const addr = env[names.gateway_addr] || '';
  if (addr === '') {
    const socketPath = env[names.socket] || DEFAULT_SOCKET;
    const egressSocket = path.join(path.dirname(socketPath), PROTOCOL.session_dir.egress_socket);
    const caPath = path.join(path.dirname(socketPath), PROTOCOL.session_dir.egress_ca);
    return {
      where: `model socket ${socketPath}`,
      check() {
        try {
          if (!fs.statSync(socketPath).isSocket()) throw new Error('not a socket');
        } catch (err) {
          const why = err.code === 'ENOENT' ? 'no such file' : errorText(err);
          return `model socket ${socketPath}: ${why} (${names.socket}; the host's gateway serves it)`;
        }
        return '';
      },
      dial: (service) =>
        net.connect({ path: service === PROTOCOL.hello.egress ? egressSocket : socketPath, allowHalfOpen: true }),
      hasEgress: () => isSocket(egressSocket),
      egressCA: () => (fs.existsSync(caPath) ? caPath : ''),
    };
  }
  const colon = addr.lastIndexOf(':');
  const host = addr.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const port = Number(addr.slice(colon + 1));
  const ca = env[names.gateway_ca] || '';
  return {
    where: `gateway ${ca ? 'tls' : 'tcp'}://${addr}`,
    check: () => (colon > 0 && port > 0 && port < 65536 ? '' : `${names.gateway_addr} ${JSON.stringify(addr)} is not host:port`),
    dial(service) {
      const opts = { host, port, allowHalfOpen: true };
      const sock = ca ? tls.connect({ ...opts, ca, servername: net.isIP(host) ? undefined : host }) : net.connect(opts);
      sock.write(`${PROTOCOL.hello.magic} ${token} ${service}\n`);
      return sock;
    },
    hasEgress: () => env[names.gateway_egress] === '1',
    egressCA() {
      if (!env[names.egress_ca]) return '';
      const p = '/tmp/sandstorm-egress-ca.pem';
      fs.writeFileSync(p, env[names.egress_ca], { mode: 0o644 });
      return p;
    },
  };
}

// startForwarder listens on an ephemeral 127.0.0.1 port and pipes every
// connection, byte for byte and in both directions, to the gateway's
// service. It never buffers a whole request or response: streamed replies
// stream.
function startForwarder(gw, service, what) {
  const open = new Set();
  let reported = false;
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const upstream = gw.dial(service);
    open.add(client);
    open.add(upstream);
    client.setNoDelay(true);
    const fail = (side) => (err) => {
      if (!reported) {
        reported = true; // once: the CLI retries and would repeat it
        logErr(`${what} (${gw.where}): ${side}: ${errorText(err)}`);
      }
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail('client'));
    upstream.on('error', fail('gateway'));
    // pipe() ends the other side when one side's input ends (half-close), so
    // a request's end and a response's end both pass through.
    client.pipe(upstream);
    upstream.pipe(client);
    const settle = (self, other) => () => {
      open.delete(self);
      if (!other.destroyed && !other.writableEnded) other.end();
      // A peer that ignores the end must not keep the runner alive.
      setTimeout(() => other.destroy(), 2000).unref();
    };
    client.on('close', settle(client, upstream));
    upstream.on('close', settle(upstream, client));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      server.on('error', (err) => logErr(`forwarder: ${errorText(err)}`));
      resolve({
        port: server.address().port,
        close() {
          server.close();
          for (const s of open) s.destroy();
        },
      });
    });
  });
}

// ---- main ------------------------------------------------------------------

let forwarder = null;
let egressForwarder = null;
let exiting = false;

function finish(code) {
  if (exiting) return;
  exiting = true;
  if (forwarder) forwarder.close();
  if (egressForwarder) egressForwarder.close();
  // Let stdout drain before exiting (it is synchronous for files and pipes
  // on Linux, but not everywhere).
  process.stdout.write('', () => process.exit(code));
  setTimeout(() => process.exit(code), 2000).unref();
}

// The cloud-provider switches: when sandstorm forwards one, the CLI talks to
// that provider directly with the credentials forwarded along with it.
const PROVIDER_SWITCHES = ['CLAUDE_CODE_USE_BEDROCK', 'CLAUDE_CODE_USE_VERTEX', 'CLAUDE_CODE_USE_FOUNDRY'];

function providerMode(env) {
  return PROVIDER_SWITCHES.some((name) => env[name] !== undefined && env[name] !== '' && env[name] !== '0');
}

// The proxy variables every tool reads (curl only the lowercase http_proxy;
// the CLI, npm, pip, git and Python either case).
const PROXY_VARS = ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'];

function childEnv(port, token, egressPort, caVars) {
  const env = { ...process.env };
  // The CLI must authenticate only with the session token, only at the
  // forwarder: drop every other way it could pick a credential or endpoint,
  // unless a provider mode was asked for explicitly.
  const strip = [PROTOCOL.env.token, 'ANTHROPIC_AUTH_TOKEN', 'CLAUDE_CODE_OAUTH_TOKEN'];
  if (!providerMode(process.env)) {
    strip.push(...PROVIDER_SWITCHES, 'ANTHROPIC_BEDROCK_BASE_URL', 'ANTHROPIC_VERTEX_BASE_URL');
  }
  for (const name of strip) {
    delete env[name];
  }
  env.ANTHROPIC_BASE_URL = `http://127.0.0.1:${port}`;
  env.ANTHROPIC_API_KEY = token;
  env.CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = '1';
  env.CLAUDE_CODE_MAX_RETRIES = process.env.CLAUDE_CODE_MAX_RETRIES || DEFAULT_MAX_RETRIES;
  env.CLAUDE_AGENT_SDK_CLIENT_APP = 'sandstorm-runner/1';
  if (!env.HOME) env.HOME = PROTOCOL.default_workspace;
  // The CLI keeps its state (~/.claude.json, ~/.claude/) under
  // CLAUDE_CONFIG_DIR, else HOME, which is the workspace: keep the workspace
  // to what the agent itself writes.
  if (!env.CLAUDE_CONFIG_DIR) env.CLAUDE_CONFIG_DIR = DEFAULT_CLAUDE_CONFIG_DIR;
  Object.assign(env, caVars || {});
  if (egressPort) {
    // The network is the gateway's egress proxy, through its forwarder.
    for (const name of PROXY_VARS) env[name] = `http://127.0.0.1:${egressPort}`;
    // The same socket speaks SOCKS5 for TCP tools with no HTTP proxy
    // (socks5h: the proxy resolves names, as it must to check them).
    for (const name of ['ALL_PROXY', 'all_proxy']) env[name] = `socks5h://127.0.0.1:${egressPort}`;
    for (const name of ['NO_PROXY', 'no_proxy']) env[name] = 'localhost,127.0.0.1';
  }
  // A proxy configured for the sandbox's tools must not capture the
  // forwarder's loopback address.
  for (const name of ['NO_PROXY', 'no_proxy']) {
    if (!env[name]) env[name] = '127.0.0.1';
    else if (!env[name].split(',').includes('127.0.0.1')) env[name] += ',127.0.0.1';
  }
  if (typeof process.getuid === 'function' && process.getuid() === 0) {
    // The CLI refuses bypassPermissions as root unless told it is sandboxed,
    // which it is. The image runs as uid 1000; this is for root overrides.
    env.IS_SANDBOX = '1';
    logErr('warning: running as uid 0; the image is meant to run as uid 1000');
  }
  return env;
}

// getJSON fetches a JSON document the gateway serves a session.
async function getJSON(gw, token, where) {
  let text;
  try {
    text = await fetchText(gw, token, where, CONFIG_TIMEOUT_MS);
  } catch (err) {
    throw new Error(`${where}: ${errorText(err)}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${where}: not valid JSON: ${errorText(err)}`);
  }
}

// writeFiles puts a warm sandbox's run's files into the workspace, as the
// agent user: relative paths only, never through a symlink, never over a
// file already there.
function writeFiles(cwd, files) {
  if (!Array.isArray(files)) throw new Error('files: must be an array');
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  for (const f of files) {
    const rel = typeof f.path === 'string' ? path.posix.normalize(f.path) : '';
    if (rel === '' || rel === '.' || path.posix.isAbsolute(rel) || rel === '..' || rel.startsWith('../')) {
      throw new Error(`files: bad path ${JSON.stringify(f.path)}`);
    }
    const dst = path.join(cwd, rel);
    fs.mkdirSync(path.dirname(dst), { recursive: true, mode: 0o755 });
    const mode = Number.isInteger(f.mode) ? f.mode & 0o777 : 0o644;
    const fd = fs.openSync(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    try {
      fs.writeSync(fd, Buffer.from(f.content || '', 'base64'));
      fs.fchmodSync(fd, mode);
    } finally {
      fs.closeSync(fd);
    }
  }
}

// sameOptions reports whether two configs ask for the same agent, prompt aside.
function sameOptions(a, b) {
  const strip = (c) => JSON.stringify({ ...c, prompt: undefined });
  return strip(a) === strip(b);
}

// failWith reports why the runner cannot run and ends it.
function failWith(code, msg) {
  logErr(msg);
  emitError(code, msg);
  return finish(PROTOCOL.exit.failed);
}

// A CLI just spawned goes on with deferred start-up work (plugins, file
// watchers) for a second or two; a prompt that comes then waits behind it.
// A warm sandbox says it is ready once its processes have been idle for a
// moment, or after SETTLE_MAX_MS whatever they do.
const SETTLE_POLL_MS = 100;
const SETTLE_IDLE_MS = 300;
const SETTLE_MAX_MS = 5000;

// cpuTicks is the CPU time, in clock ticks, that every process of the
// sandbox's PID namespace has used so far.
function cpuTicks() {
  let total = 0;
  for (const name of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      // After "pid (comm) ": state is field 3, utime 14, stime 15.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total += Number(f[11]) + Number(f[12]);
    } catch {
      // It exited meanwhile.
    }
  }
  return total;
}

async function settle() {
  const start = Date.now();
  let last = cpuTicks();
  let idleSince = start;
  while (Date.now() - start < SETTLE_MAX_MS) {
    await new Promise((resolve) => setTimeout(resolve, SETTLE_POLL_MS));
    const now = cpuTicks();
    // At most a tick per poll is idle: the runner's own polling.
    if (now - last > 1) idleSince = Date.now();
    else if (Date.now() - idleSince >= SETTLE_IDLE_MS) return;
    last = now;
  }
}

const timings = process.env[PROTOCOL.env.timings] === '1';
function mark(phase) {
  if (timings) process.stderr.write(`${PROTOCOL.timing_prefix}${phase} ${Date.now()}\n`);
}

async function main() {
  mark('runner_started');
  // The SDK loads while the config comes and the forwarders start: it is
  // the slowest step before the query.
  const sdk = import('@anthropic-ai/claude-agent-sdk').then((m) => {
    mark('sdk_loaded');
    return m;
  });
  sdk.catch(() => {}); // failures are reported where it is awaited
  const names = PROTOCOL.env;
  const configPath = process.env[names.config_file] || '';
  const cwd = process.env[names.workspace] || PROTOCOL.default_workspace;
  const token = process.env[names.token] || '';

  let cfg;
  try {
    if (configPath !== '') cfg = readConfig(configPath);
    if (token === '') throw new ConfigError(`${names.token} is not set: the model gateway needs the session token`);
    let st;
    try {
      st = fs.statSync(cwd);
    } catch {
      throw new ConfigError(`workspace ${cwd} does not exist (${names.workspace})`);
    }
    if (!st.isDirectory()) throw new ConfigError(`workspace ${cwd} is not a directory (${names.workspace})`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return failWith('invalid_config', err.message);
  }

  const gw = gatewayFrom(process.env, token);
  const unreachable = gw.check();
  if (unreachable !== '') return failWith('model_unreachable', unreachable);

  // A warm sandbox (PROTOCOL.env.wait=1) gets its options first and
  // starts the CLI with them, then waits for its run's config.
  let warmCfg = null;
  let pending = null;
  if (cfg === undefined) {
    try {
      if (process.env[names.wait] === '1') {
        warmCfg = await fetchConfig(gw, token, { warm: true });
      } else {
        cfg = await fetchConfig(gw, token);
      }
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return failWith('invalid_config', err.message);
    }
  }

  mark('config_received');
  try {
    forwarder = await startForwarder(gw, PROTOCOL.hello.model, 'model gateway');
  } catch (err) {
    const msg = `cannot listen on 127.0.0.1 for the model forwarder: ${errorText(err)} (is the loopback interface up?)`;
    return failWith('forwarder_failed', msg);
  }
  // The gateway serves an egress proxy next to the model when the run's
  // network mode is proxy.
  if (gw.hasEgress()) {
    try {
      egressForwarder = await startForwarder(gw, PROTOCOL.hello.egress, 'egress proxy');
    } catch (err) {
      const msg = `cannot listen on 127.0.0.1 for the egress forwarder: ${errorText(err)}`;
      return failWith('forwarder_failed', msg);
    }
  }
  let caVars = null;
  let caPath = '';
  try {
    caPath = gw.egressCA();
  } catch (err) {
    return failWith('internal', `cannot write the egress CA: ${errorText(err)}`);
  }
  if (caPath !== '') {
    try {
      caVars = trustEgressCA(caPath);
    } catch (err) {
      return failWith('internal', `cannot trust the egress CA: ${errorText(err)}`);
    }
  }

  let query;
  try {
    ({ query } = await sdk);
  } catch (err) {
    const msg = `cannot load @anthropic-ai/claude-agent-sdk: ${errorText(err)}`;
    return failWith('sdk_missing', msg);
  }

  const abortController = new AbortController();
  let signalled = null;
  const onSignal = (sig, num) => {
    if (signalled) {
      // Second signal: no more patience.
      process.stdout.write('', () => process.exit(PROTOCOL.exit.signal_base + num));
      return;
    }
    signalled = { sig, code: PROTOCOL.exit.signal_base + num };
    logErr(`${sig}: aborting the query`);
    abortController.abort();
    setTimeout(() => {
      if (exiting) return;
      emitError('aborted', `terminated by ${sig}`);
      finish(signalled.code);
    }, ABORT_GRACE_MS).unref();
  };
  process.on('SIGTERM', () => onSignal('SIGTERM', 15));
  process.on('SIGINT', () => onSignal('SIGINT', 2));
  process.on('SIGHUP', () => onSignal('SIGHUP', 1));

  const options = {
    cwd,
    env: childEnv(forwarder.port, token, egressForwarder && egressForwarder.port, caVars),
    abortController,
    permissionMode: 'bypassPermissions',
    allowDangerouslySkipPermissions: true,
    settingSources: [],
    persistSession: false,
    stderr: (data) => process.stderr.write(scrub(data)),
  };
  const optionsOf = cfg || warmCfg;
  for (const [key, f] of Object.entries(FIELDS)) {
    if (f.option && optionsOf[key] !== undefined && optionsOf[key] !== null) options[f.option] = optionsOf[key];
  }
  if (process.env[names.claude_executable]) {
    options.pathToClaudeCodeExecutable = process.env[names.claude_executable];
  }

  let last = null;
  let failure = null;
  try {
    let messages;
    let ended = () => {};
    if (warmCfg) {
      // Streaming input: the CLI starts now and waits for the one user
      // message, the run's prompt; the input ends after the result.
      let release;
      const released = new Promise((resolve) => (release = resolve));
      const done = new Promise((resolve) => (ended = resolve));
      const input = (async function* () {
        const text = await released;
        yield { type: 'user', message: { role: 'user', content: text }, parent_tool_use_id: null, session_id: '' };
        await done;
      })();
      mark('query_called');
      messages = query({ prompt: input, options });
      await settle();
      mark('settled');
      // Waiting for the run tells the host this sandbox is ready.
      try {
        cfg = await fetchConfig(gw, token, { wait: true });
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        return failWith('invalid_config', err.message);
      }
      mark('config_received');
      if (!sameOptions(cfg, warmCfg)) {
        return failWith('invalid_config', "the run's agent options differ from the warm sandbox's");
      }
      try {
        writeFiles(cwd, await getJSON(gw, token, PROTOCOL.docs.files));
      } catch (err) {
        return failWith('invalid_config', `the run's files: ${errorText(err)}`);
      }
      mark('released');
      release(cfg.prompt);
    } else {
      mark('query_called');
      messages = query({ prompt: cfg.prompt, options });
    }
    for await (const message of messages) {
      emit(message);
      if (message && message.type === PROTOCOL.result_type) {
        last = message;
        ended();
      }
    }
  } catch (err) {
    failure = err;
  }

  if (signalled) {
    emitError('aborted', `terminated by ${signalled.sig}`);
    return finish(signalled.code);
  }
  if (failure) {
    const msg = `agent failed: ${errorText(failure)}`;
    return failWith('sdk_error', msg);
  }
  if (!last) {
    const msg = 'the query ended without a result message';
    return failWith('no_result', msg);
  }
  if (last.subtype === 'success' && last.is_error === false) return finish(PROTOCOL.exit.succeeded);
  logErr(`result: subtype ${last.subtype}, is_error ${last.is_error}`);
  return finish(PROTOCOL.exit.failed);
}

process.on('uncaughtException', (err) => {
  logErr(`internal error: ${errorText(err)}`);
  emitError('internal', errorText(err));
  finish(PROTOCOL.exit.failed);
});
process.on('unhandledRejection', (err) => {
  logErr(`internal error: ${errorText(err)}`);
  emitError('internal', errorText(err));
  finish(PROTOCOL.exit.failed);
});

main().catch((err) => {
  logErr(`internal error: ${errorText(err)}`);
  emitError('internal', errorText(err));
  finish(PROTOCOL.exit.failed);
});
