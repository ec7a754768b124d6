// The seed README's JavaScript client (Node 18+ fetch), unchanged but for the URL.
const url = process.env.SANDSTORM_URL ?? 'http://localhost:8000';
const response = await fetch(url + '/query', {
  method: 'POST',
  headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({
    prompt: 'Create hello.py and run it'
  })
});

const reader = response.body.getReader();
while (true) {
  const {done, value} = await reader.read();
  if (done) break;
  console.log(new TextDecoder().decode(value));
}
