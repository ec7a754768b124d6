package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/kubernetes"
)

// kubernetesAllow are the items a Pod cannot have that the default policy needs.
const kubernetesAllow = "pids_limit,nosuid_mounts,network_none"

// TestServeKubernetes: `ds serve --runtime kubernetes` as the README says
// to run it, its gateway on TCP (TLS) at the node's address of this host:
// a real agent run as a Pod streams to its end, and nothing of it is left
// in the cluster. Without --gateway-listen it refuses to start, saying so.
func TestServeKubernetes(t *testing.T) {
	rt := agentBackend(t, kubernetes.Name)
	dir := t.TempDir()
	if r := ds(t, dir, "hi", "--runtime", kubernetes.Name, "--allow-unenforced", kubernetesAllow); r.code != 78 || !strings.Contains(r.stderr, "--gateway-listen") {
		t.Errorf("kubernetes without --gateway-listen: exit %d, stderr %q; want 78 naming --gateway-listen", r.code, r.stderr)
	}
	if r := ds(t, dir, "hi", "--runtime", kubernetes.Name, "--gateway-listen", "0.0.0.0:0"); r.code != 78 || !strings.Contains(r.stderr, "not every interface") {
		t.Errorf("--gateway-listen 0.0.0.0: exit %d, stderr %q; want 78", r.code, r.stderr)
	}
	host := cmp.Or(os.Getenv("SANDSTORM_K8S_GATEWAY_HOST"), "10.245.0.1")
	s := serve(t, dir, kubernetes.Name, "--gateway-listen", host+":0", "--gateway-tls", "--allow-unenforced", kubernetesAllow)
	resp, err := http.Post(s.url+"/query", "application/json", strings.NewReader(`{"prompt":"Write a haiku"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stream strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 32<<20)
	for sc.Scan() {
		stream.WriteString(sc.Text() + "\n")
	}
	out := stream.String()
	for _, want := range []string{`"event":"created"`, `"runtime":"kubernetes"`, `"type":"assistant"`, `"subtype":"success"`, `"event":"removed"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the stream has no %s:\n%.3000s", want, out)
		}
	}
	if strings.Contains(out, `"type":"error"`) {
		t.Errorf("the run reported an error:\n%.3000s", out)
	}
	found, err := rt.List(t.Context(), map[string]string{oci.LabelManaged: "true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		if f.Labels[kubernetes.LabelHost] != "" && strings.Contains(out, f.ID) {
			t.Errorf("the run's Pod %s is still there", f.ID)
		}
	}
}

// TestKubernetesRBAC: the Role and ClusterRole of deploy/kubernetes.yaml
// are enough: a real agent runs as a Pod with ds holding only that
// service account's token, its files handed back, nothing left.
func TestKubernetesRBAC(t *testing.T) {
	agentBackend(t, kubernetes.Name)
	ctx := t.Context()
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := k8s.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("../../deploy/kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("deploy/kubernetes.yaml: %v", err)
		}
		if err := apply(ctx, admin, obj); err != nil {
			t.Fatalf("apply %T: %v", obj, err)
		}
	}
	tok, err := admin.CoreV1().ServiceAccounts("sandstorm-system").CreateToken(ctx, "sandstorm",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca := rc.CAData
	if len(ca) == 0 {
		if ca, err = os.ReadFile(rc.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "sa.kubeconfig")
	cfg := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]\n"+
		"users: [{name: sa, user: {token: %s}}]\ncontexts: [{name: c, context: {cluster: c, user: sa}}]\ncurrent-context: c\n",
		rc.Host, base64.StdEncoding.EncodeToString(ca), tok.Status.Token)
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	host := cmp.Or(os.Getenv("SANDSTORM_K8S_GATEWAY_HOST"), "10.245.0.1")
	// Only the service account's kubeconfig: not the admin's of $KUBECONFIG.
	r := dsEnv(t, dir, []string{"KUBECONFIG=/nonexistent"},
		"--runtime", kubernetes.Name, "--kubeconfig", kubeconfig, "--gateway-listen", host+":0", "--allow-unenforced", kubernetesAllow,
		"--raw", "Write a haiku")
	if r.code != 0 || !strings.Contains(r.stdout, `"subtype":"success"`) || !strings.Contains(r.stdout, `"event":"removed"`) {
		t.Fatalf("ds with the service account's token: exit %d\nstdout %.3000s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, tok.Status.Token) {
		t.Error("the service account's token appeared in ds's output")
	}
}

// apply creates obj, or updates it when it exists; a Deployment is not
// applied (its images are a registry's).
func apply(ctx context.Context, c k8s.Interface, obj kruntime.Object) error {
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = c.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			var have *corev1.Namespace
			if have, err = c.CoreV1().Namespaces().Get(ctx, o.Name, metav1.GetOptions{}); err == nil {
				o.ResourceVersion = have.ResourceVersion
				_, err = c.CoreV1().Namespaces().Update(ctx, o, metav1.UpdateOptions{})
			}
		}
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	case *rbacv1.Role:
		if _, err = c.RbacV1().Roles(o.Namespace).Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
	case *rbacv1.RoleBinding:
		if _, err = c.RbacV1().RoleBindings(o.Namespace).Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
	case *rbacv1.ClusterRole:
		if _, err = c.RbacV1().ClusterRoles().Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = c.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		}
	case *rbacv1.ClusterRoleBinding:
		if _, err = c.RbacV1().ClusterRoleBindings().Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		}
	case *appsv1.Deployment:
	default:
		err = fmt.Errorf("deploy/kubernetes.yaml holds a %T the test does not know", obj)
	}
	return err
}

func ptr[T any](v T) *T { return &v }
