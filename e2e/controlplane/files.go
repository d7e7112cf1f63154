package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ports are chosen once per directory and reused on restart, so clients holding the kubeconfig
// find the API server again at the same address.
type ports struct {
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
	APIServer  int `json:"apiServer"`
}

// files is where everything lives under the state directory.
type files struct {
	dir   string
	ports ports
	// host is the API server's address in URLs: 127.0.0.1, or the node IP with --node (where
	// the API server binds there only, to be reachable from pods without listening off-machine).
	host string
}

func (l *files) path(name string) string { return filepath.Join(l.dir, name) }
func (l *files) cert(name string) string { return filepath.Join(l.dir, "pki", name) }
func (l *files) apiURL() string          { return fmt.Sprintf("https://%s:%d", l.host, l.ports.APIServer) }

// layout loads (or picks and records) the ports for dir.
func layout(dir, host string) (*files, error) {
	l := &files{dir: dir, host: host}
	portsFile := l.path("ports.json")
	data, err := os.ReadFile(portsFile)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &l.ports); err != nil {
			return nil, fmt.Errorf("%s: %w", portsFile, err)
		}
		return l, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	free, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	l.ports = ports{EtcdClient: free[0], EtcdPeer: free[1], APIServer: free[2]}
	data, err = json.MarshalIndent(l.ports, "", "  ")
	if err != nil {
		return nil, err
	}
	return l, writeFileAtomic(portsFile, data, 0o600)
}

// freePorts asks the kernel for n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	var out []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// ensureFiles creates what is missing: the CA, the API server's serving certificate, the admin
// client certificate, the service-account signing key, the audit policy and the kubeconfig.
// Existing keys are kept, so a restart on the same directory keeps tokens and kubeconfigs valid.
func (l *files) ensureFiles() error {
	if err := os.MkdirAll(filepath.Join(l.dir, "pki"), 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(l.cert("ca.crt")); errors.Is(err, os.ErrNotExist) {
		if err := l.generatePKI(); err != nil {
			return fmt.Errorf("generating certificates: %w", err)
		}
	}
	if err := writeFileAtomic(l.path("audit-policy.yaml"), []byte(auditPolicy), 0o600); err != nil {
		return err
	}
	return l.writeKubeconfig()
}

// auditPolicy records every write at Metadata level (who, what, which verb, the request URI
// with its fieldManager, the user agent) and nothing for reads, to keep the log small.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # The API server renews its own lease every 10 s: noise.
  - level: None
    users: ["system:apiserver"]
    resources: [{group: "coordination.k8s.io", resources: ["leases"]}]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
`

func (l *files) generatePKI() error {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "controlplane-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}

	issue := func(name string, tmpl *x509.Certificate) error {
		return l.issue(caCert, caKey, name, tmpl)
	}
	if err := issue("apiserver", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		// The node IP and the `kubernetes` Service's ClusterIP: with --node, pods reach the API
		// server through either.
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(nodeIP), net.ParseIP(apiServiceIP)},
	}); err != nil {
		return err
	}
	if err := issue("admin", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return err
	}
	if err := writePEM(l.cert("sa.key"), "PRIVATE KEY", saDER); err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(l.cert("sa.pub"), "PUBLIC KEY", saPub); err != nil {
		return err
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	if err != nil {
		return err
	}
	if err := writePEM(l.cert("ca.key"), "PRIVATE KEY", caKeyDER); err != nil {
		return err
	}
	// Written last: its presence means the set is complete.
	return writePEM(l.cert("ca.crt"), "CERTIFICATE", caDER)
}

// issue writes NAME.crt and NAME.key: a new P-256 key and a certificate for it, from tmpl,
// signed by the CA and valid for ten years.
func (l *files) issue(caCert *x509.Certificate, caKey crypto.Signer, name string, tmpl *x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.AddDate(10, 0, 0)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(l.cert(name+".key"), "PRIVATE KEY", keyDER); err != nil {
		return err
	}
	return writePEM(l.cert(name+".crt"), "CERTIFICATE", der)
}

// loadCA reads the CA certificate and key written by generatePKI.
func (l *files) loadCA() (*x509.Certificate, crypto.Signer, error) {
	read := func(name, kind string) ([]byte, error) {
		data, err := os.ReadFile(l.cert(name))
		if err != nil {
			return nil, err
		}
		block, _ := pem.Decode(data)
		if block == nil || block.Type != kind {
			return nil, fmt.Errorf("%s: no %s PEM block", name, kind)
		}
		return block.Bytes, nil
	}
	certDER, err := read("ca.crt", "CERTIFICATE")
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := read("ca.key", "PRIVATE KEY")
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("ca.key: not a signing key")
	}
	return cert, signer, nil
}

// writeKubeconfig writes DIR/kubeconfig for the admin user (group system:masters), with the
// certificates embedded so the file can be copied anywhere.
func (l *files) writeKubeconfig() error {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(l.cert(name))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	crt, err := read("admin.crt")
	if err != nil {
		return err
	}
	key, err := read("admin.key")
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
  - name: controlplane
    cluster:
      server: %s
      certificate-authority-data: %s
users:
  - name: admin
    user:
      client-certificate-data: %s
      client-key-data: %s
contexts:
  - name: admin
    context:
      cluster: controlplane
      user: admin
      namespace: default
current-context: admin
`, l.apiURL(), ca, crt, key)
	return writeFileAtomic(l.path("kubeconfig"), []byte(cfg), 0o600)
}

func writePEM(path, kind string, der []byte) error {
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

// writeFileAtomic writes via a temporary file and a rename, so readers never see half a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
