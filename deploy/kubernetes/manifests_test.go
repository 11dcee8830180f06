// Package kubernetes holds the Kubernetes manifests of cdcinvalidate; this
// test checks them against the code they deploy.
//
// The manifests are decoded strictly (unknown fields are errors) into
// small structs that spell the Kubernetes API's field names, so a misspelt
// or misplaced field fails here; the real API types (k8s.io/api) would add
// about twenty modules to go.mod for six files.
package kubernetes

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/metrics"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

type objectMeta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type kustomization struct {
	APIVersion string          `yaml:"apiVersion"`
	Kind       string          `yaml:"kind"`
	Resources  []string        `yaml:"resources"`
	Images     []imageOverride `yaml:"images"`
}

type imageOverride struct {
	Name    string `yaml:"name"`
	NewName string `yaml:"newName"`
	NewTag  string `yaml:"newTag"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
	Protocol      string `yaml:"protocol"`
}

type serviceAccount struct {
	APIVersion                   string     `yaml:"apiVersion"`
	Kind                         string     `yaml:"kind"`
	Metadata                     objectMeta `yaml:"metadata"`
	AutomountServiceAccountToken *bool      `yaml:"automountServiceAccountToken"`
}

type configMap struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   objectMeta        `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
}

type secret struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   objectMeta        `yaml:"metadata"`
	Type       string            `yaml:"type"`
	StringData map[string]string `yaml:"stringData"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
	PeriodSeconds    int `yaml:"periodSeconds"`
	TimeoutSeconds   int `yaml:"timeoutSeconds"`
	FailureThreshold int `yaml:"failureThreshold"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Args            []string `yaml:"args"`
	Env             []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name     string `yaml:"name"`
				Key      string `yaml:"key"`
				Optional bool   `yaml:"optional"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports          []containerPort `yaml:"ports"`
	LivenessProbe  *probe          `yaml:"livenessProbe"`
	ReadinessProbe *probe          `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type deployment struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Replicas             int           `yaml:"replicas"`
		RevisionHistoryLimit int           `yaml:"revisionHistoryLimit"`
		Selector             labelSelector `yaml:"selector"`
		Strategy             struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxSurge       int `yaml:"maxSurge"`
				MaxUnavailable int `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     struct {
				ServiceAccountName            string `yaml:"serviceAccountName"`
				AutomountServiceAccountToken  *bool  `yaml:"automountServiceAccountToken"`
				TerminationGracePeriodSeconds int    `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot   *bool `yaml:"runAsNonRoot"`
					RunAsUser      int64 `yaml:"runAsUser"`
					RunAsGroup     int64 `yaml:"runAsGroup"`
					SeccompProfile struct {
						Type string `yaml:"type"`
					} `yaml:"seccompProfile"`
				} `yaml:"securityContext"`
				TopologySpreadConstraints []struct {
					MaxSkew           int           `yaml:"maxSkew"`
					TopologyKey       string        `yaml:"topologyKey"`
					WhenUnsatisfiable string        `yaml:"whenUnsatisfiable"`
					LabelSelector     labelSelector `yaml:"labelSelector"`
				} `yaml:"topologySpreadConstraints"`
				Containers []container `yaml:"containers"`
				Volumes    []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
					EmptyDir *struct {
						SizeLimit string `yaml:"sizeLimit"`
					} `yaml:"emptyDir"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type service struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		ClusterIP                string            `yaml:"clusterIP"`
		PublishNotReadyAddresses bool              `yaml:"publishNotReadyAddresses"`
		Selector                 map[string]string `yaml:"selector"`
		Ports                    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type podDisruptionBudget struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		MinAvailable               int           `yaml:"minAvailable"`
		UnhealthyPodEvictionPolicy string        `yaml:"unhealthyPodEvictionPolicy"`
		Selector                   labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Selector  labelSelector `yaml:"selector"`
		Endpoints []struct {
			Port     string `yaml:"port"`
			Path     string `yaml:"path"`
			Interval string `yaml:"interval"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

// decode reads one manifest strictly: one document, no unknown fields.
func decode(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var more any
	if err := dec.Decode(&more); err == nil {
		t.Fatalf("%s: more than one YAML document", file)
	}
}

func checkKind(t *testing.T, file, apiVersion, kind, wantAPIVersion, wantKind string) {
	t.Helper()
	if apiVersion != wantAPIVersion || kind != wantKind {
		t.Errorf("%s: %s %s, want %s %s", file, apiVersion, kind, wantAPIVersion, wantKind)
	}
}

// selects reports whether every label of sel is on labels (and sel is not empty).
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// bytesOf parses the memory quantities the manifests use (Ki, Mi, Gi, M).
func bytesOf(t *testing.T, q string) int64 {
	t.Helper()
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"M", 1000 * 1000}} {
		if n, ok := strings.CutSuffix(q, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("quantity %q: %v", q, err)
			}
			return v * u.mult
		}
	}
	t.Fatalf("quantity %q: use Ki, Mi, Gi or M", q)
	return 0
}

type manifests struct {
	kustomization kustomization
	account       serviceAccount
	config        configMap
	secret        secret
	deploy        deployment
	service       service
	pdb           podDisruptionBudget
	monitor       serviceMonitor
}

func load(t *testing.T) manifests {
	t.Helper()
	var m manifests
	decode(t, "kustomization.yaml", &m.kustomization)
	decode(t, "serviceaccount.yaml", &m.account)
	decode(t, "configmap.yaml", &m.config)
	decode(t, "secret.example.yaml", &m.secret)
	decode(t, "deployment.yaml", &m.deploy)
	decode(t, "service.yaml", &m.service)
	decode(t, "pdb.yaml", &m.pdb)
	decode(t, "servicemonitor.yaml", &m.monitor)
	checkKind(t, "kustomization.yaml", m.kustomization.APIVersion, m.kustomization.Kind,
		"kustomize.config.k8s.io/v1beta1", "Kustomization")
	checkKind(t, "serviceaccount.yaml", m.account.APIVersion, m.account.Kind, "v1", "ServiceAccount")
	checkKind(t, "configmap.yaml", m.config.APIVersion, m.config.Kind, "v1", "ConfigMap")
	checkKind(t, "secret.example.yaml", m.secret.APIVersion, m.secret.Kind, "v1", "Secret")
	checkKind(t, "deployment.yaml", m.deploy.APIVersion, m.deploy.Kind, "apps/v1", "Deployment")
	checkKind(t, "service.yaml", m.service.APIVersion, m.service.Kind, "v1", "Service")
	checkKind(t, "pdb.yaml", m.pdb.APIVersion, m.pdb.Kind, "policy/v1", "PodDisruptionBudget")
	checkKind(t, "servicemonitor.yaml", m.monitor.APIVersion, m.monitor.Kind, "monitoring.coreos.com/v1", "ServiceMonitor")
	if n := len(m.deploy.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("deployment.yaml: %d containers, want 1", n)
	}
	return m
}

// TestKustomizationListsEveryManifest: every manifest but the example
// Secret is applied, and nothing listed is missing.
func TestKustomizationListsEveryManifest(t *testing.T) {
	t.Parallel()
	m := load(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range files {
		if f != "kustomization.yaml" && f != "secret.example.yaml" {
			want = append(want, f)
		}
	}
	got := slices.Sorted(slices.Values(m.kustomization.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources %v, want the manifests %v", got, want)
	}
	if slices.Contains(m.kustomization.Resources, "secret.example.yaml") {
		t.Error("kustomization.yaml applies secret.example.yaml, which would overwrite the real Secret")
	}
	c := m.deploy.Spec.Template.Spec.Containers[0]
	if !slices.ContainsFunc(m.kustomization.Images, func(i imageOverride) bool { return i.Name == c.Image }) {
		t.Errorf("kustomization.yaml images do not set the container's image %q", c.Image)
	}
}

// TestConfigMapLoadsWithDeploymentEnv loads the ConfigMap's rules.yaml with
// config.Parse, under the environment the Deployment gives the container
// (Secret values from secret.example.yaml), and checks that the container
// reads it from where the ConfigMap is mounted.
func TestConfigMapLoadsWithDeploymentEnv(t *testing.T) {
	t.Parallel()
	m := load(t)
	cfg, file := loadConfig(t, m)
	if cfg.Postgres.DSN != m.secret.StringData["CDC_POSTGRES_DSN"] {
		t.Errorf("postgres.dsn = %q, want CDC_POSTGRES_DSN from the Secret", config.Redact(cfg.Postgres.DSN))
	}
	if cfg.Redis.Password == "" {
		t.Error("redis.password is empty: CDC_REDIS_PASSWORD from the Secret did not arrive")
	}
	// Secrets stay out of the ConfigMap: no postgres.dsn, no redis.password.
	var plain struct {
		Postgres map[string]any `yaml:"postgres"`
		Redis    map[string]any `yaml:"redis"`
	}
	if err := yaml.Unmarshal([]byte(m.config.Data[path.Base(file)]), &plain); err != nil {
		t.Fatal(err)
	}
	if _, ok := plain.Postgres["dsn"]; ok {
		t.Error("the ConfigMap sets postgres.dsn: leave it to CDC_POSTGRES_DSN from the Secret")
	}
	if _, ok := plain.Redis["password"]; ok {
		t.Error("the ConfigMap sets redis.password: leave it to CDC_REDIS_PASSWORD from the Secret")
	}
	// The --config path is the mounted ConfigMap key.
	spec := m.deploy.Spec.Template.Spec
	c := spec.Containers[0]
	var mountedFrom string
	for _, vm := range c.VolumeMounts {
		if path.Dir(file) == vm.MountPath {
			mountedFrom = vm.Name
			if !vm.ReadOnly {
				t.Errorf("the configuration mount %s is not readOnly", vm.MountPath)
			}
		}
	}
	found := false
	for _, v := range spec.Volumes {
		if v.Name == mountedFrom && v.ConfigMap != nil && v.ConfigMap.Name == m.config.Metadata.Name {
			found = true
		}
	}
	if !found {
		t.Errorf("--config %s is not a key of the ConfigMap %q mounted at %s", file, m.config.Metadata.Name, path.Dir(file))
	}
}

// loadConfig returns the configuration the container would load, and its path.
func loadConfig(t *testing.T, m manifests) (*config.Config, string) {
	t.Helper()
	c := m.deploy.Spec.Template.Spec.Containers[0]
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) {
		t.Fatalf("container args %v lack --config FILE", c.Args)
	}
	file := c.Args[i+1]
	text, ok := m.config.Data[path.Base(file)]
	if !ok {
		t.Fatalf("ConfigMap %q has no key %q (the --config file)", m.config.Metadata.Name, path.Base(file))
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != m.secret.Metadata.Name {
				t.Errorf("env %s refers to Secret %q, the example Secret is %q", e.Name, ref.Name, m.secret.Metadata.Name)
			}
			v, ok := m.secret.StringData[ref.Key]
			if !ok {
				t.Errorf("env %s refers to key %q, which secret.example.yaml lacks", e.Name, ref.Key)
			}
			env[e.Name] = v
		default:
			env[e.Name] = e.Value
		}
	}
	cfg, err := config.Parse("configmap.yaml "+path.Base(file), []byte(text), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("the ConfigMap's configuration does not load: %v", err)
	}
	return cfg, file
}

// TestEnvNamesAreOverrides: every environment variable the Deployment sets
// is one the configuration reads, and the secrets come from the Secret.
func TestEnvNamesAreOverrides(t *testing.T) {
	t.Parallel()
	m := load(t)
	known := config.EnvNames()
	fromSecret := map[string]bool{}
	for _, e := range m.deploy.Spec.Template.Spec.Containers[0].Env {
		if !slices.Contains(known, e.Name) {
			t.Errorf("env %s is not a CDC_* override the configuration reads (config.EnvNames)", e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			fromSecret[e.Name] = true
		}
	}
	for _, name := range []string{"CDC_POSTGRES_DSN", "CDC_REDIS_PASSWORD"} {
		if !fromSecret[name] {
			t.Errorf("%s does not come from the Secret", name)
		}
	}
}

// TestProbesMatchEngine checks the probes against the metrics port of the
// ConfigMap's configuration and against the real health handler: the
// standby of the two replicas must be alive and ready, a failed engine not
// alive, an engine still connecting not ready.
func TestProbesMatchEngine(t *testing.T) {
	t.Parallel()
	m := load(t)
	cfg, _ := loadConfig(t, m)
	c := m.deploy.Spec.Template.Spec.Containers[0]
	_, listenPort, err := net.SplitHostPort(cfg.Metrics.Listen)
	if err != nil || cfg.Metrics.Listen == "" {
		t.Fatalf("metrics.listen %q: the probes need the HTTP server (%v)", cfg.Metrics.Listen, err)
	}
	if host, _, _ := net.SplitHostPort(cfg.Metrics.Listen); host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("metrics.listen %q: the kubelet probes the pod IP, listen on all interfaces (\":%s\")",
			cfg.Metrics.Listen, listenPort)
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if strconv.Itoa(ports["metrics"]) != listenPort {
		t.Errorf("containerPort metrics = %d, metrics.listen port %s", ports["metrics"], listenPort)
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Fatal("the container needs a liveness and a readiness probe")
	}
	for name, p := range map[string]*probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if _, ok := ports[p.HTTPGet.Port]; !ok && p.HTTPGet.Port != listenPort {
			t.Errorf("%s probe port %q is neither a named container port nor %s", name, p.HTTPGet.Port, listenPort)
		}
		if p.TimeoutSeconds < 1 || p.PeriodSeconds < 1 || p.FailureThreshold < 2 {
			t.Errorf("%s probe: timeout %ds, period %ds, failureThreshold %d: one slow answer must not count",
				name, p.TimeoutSeconds, p.PeriodSeconds, p.FailureThreshold)
		}
	}
	live, ready := c.LivenessProbe.HTTPGet.Path, c.ReadinessProbe.HTTPGet.Path
	if !strings.HasPrefix(live, "/healthz") || !strings.HasPrefix(ready, "/readyz") {
		t.Errorf("liveness %s, readiness %s: want /healthz and /readyz", live, ready)
	}
	get := func(state string, failed bool, p string) int {
		mt := metrics.New("test", cfg.Metrics.ReadyMaxLag)
		mt.State(state)
		if failed {
			mt.SetFailed()
		}
		rec := httptest.NewRecorder()
		mt.Handler(false).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		return rec.Code
	}
	for _, tc := range []struct {
		state             string
		failed            bool
		wantLive, wantRdy int
	}{
		{replication.StateStreaming, false, 200, 200},
		{replication.StateStandby, false, 200, 200}, // the second replica
		{replication.StateConnecting, false, 200, 503},
		{replication.StateBackingOff, false, 200, 503},
		{replication.StateStreaming, true, 503, 503},
	} {
		if got := get(tc.state, tc.failed, live); got != tc.wantLive {
			t.Errorf("state %s (failed %v): liveness %s = %d, want %d", tc.state, tc.failed, live, got, tc.wantLive)
		}
		if got := get(tc.state, tc.failed, ready); got != tc.wantRdy {
			t.Errorf("state %s (failed %v): readiness %s = %d, want %d", tc.state, tc.failed, ready, got, tc.wantRdy)
		}
	}
}

// TestHighAvailability: two replicas, a rollout that starts the new pod
// before stopping an old one, and a PodDisruptionBudget over the same pods
// that lets one go at a time.
func TestHighAvailability(t *testing.T) {
	t.Parallel()
	m := load(t)
	d := m.deploy.Spec
	pod := d.Template.Metadata.Labels
	if d.Replicas != 2 {
		t.Errorf("replicas = %d, want 2 (one streams, one standby)", d.Replicas)
	}
	if !selects(d.Selector.MatchLabels, pod) {
		t.Errorf("Deployment selector %v does not select its pod labels %v", d.Selector.MatchLabels, pod)
	}
	if d.Strategy.RollingUpdate.MaxUnavailable != 0 || d.Strategy.RollingUpdate.MaxSurge < 1 {
		t.Errorf("rollingUpdate maxSurge %d maxUnavailable %d: start the new standby before stopping a pod",
			d.Strategy.RollingUpdate.MaxSurge, d.Strategy.RollingUpdate.MaxUnavailable)
	}
	if !selects(m.pdb.Spec.Selector.MatchLabels, pod) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods %v", m.pdb.Spec.Selector.MatchLabels, pod)
	}
	if a := m.pdb.Spec.MinAvailable; a < 1 || a >= d.Replicas {
		t.Errorf("PodDisruptionBudget minAvailable %d: want at least 1 and below replicas %d", a, d.Replicas)
	}
	for _, c := range d.Template.Spec.TopologySpreadConstraints {
		if !selects(c.LabelSelector.MatchLabels, pod) {
			t.Errorf("topology spread selector %v does not select the pods", c.LabelSelector.MatchLabels)
		}
	}
	// The graceful stop must fit in the grace period (ShutdownWait is 5s).
	if g := d.Template.Spec.TerminationGracePeriodSeconds; g < 10 {
		t.Errorf("terminationGracePeriodSeconds %d: leave the engine time to confirm what Redis applied", g)
	}
}

// TestMetricsScraping: the Service selects the pods and names the metrics
// port, lists unready pods too, and the ServiceMonitor selects the Service.
func TestMetricsScraping(t *testing.T) {
	t.Parallel()
	m := load(t)
	pod := m.deploy.Spec.Template.Metadata.Labels
	s := m.service
	if !selects(s.Spec.Selector, pod) {
		t.Errorf("Service selector %v does not select the pods %v", s.Spec.Selector, pod)
	}
	if !s.Spec.PublishNotReadyAddresses {
		t.Error("Service: publishNotReadyAddresses must be true, or a lagging leader's metrics are not scraped")
	}
	c := m.deploy.Spec.Template.Spec.Containers[0]
	var portNames []string
	for _, p := range s.Spec.Ports {
		portNames = append(portNames, p.Name)
		if !slices.ContainsFunc(c.Ports, func(cp containerPort) bool {
			return cp.Name == p.TargetPort || strconv.Itoa(cp.ContainerPort) == p.TargetPort
		}) {
			t.Errorf("Service port %s targets %q, not a container port", p.Name, p.TargetPort)
		}
	}
	if !selects(m.monitor.Spec.Selector.MatchLabels, s.Metadata.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service labels %v",
			m.monitor.Spec.Selector.MatchLabels, s.Metadata.Labels)
	}
	if len(m.monitor.Spec.Endpoints) == 0 {
		t.Fatal("ServiceMonitor has no endpoints")
	}
	for _, e := range m.monitor.Spec.Endpoints {
		if !slices.Contains(portNames, e.Port) || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoint port %q path %q: want a Service port (%v) and /metrics", e.Port, e.Path, portNames)
		}
		if _, err := time.ParseDuration(e.Interval); err != nil {
			t.Errorf("ServiceMonitor interval %q: %v", e.Interval, err)
		}
	}
	// deploy/prometheus-alerts.yaml selects job="<Service name>".
	alerts, err := os.ReadFile(filepath.Join("..", "prometheus-alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("job=%q", s.Metadata.Name); !strings.Contains(string(alerts), want) {
		t.Errorf("prometheus-alerts.yaml does not select %s, the job the ServiceMonitor produces", want)
	}
}

// TestResourcesAndSecurity: memory sized from the engine's soft limit and
// the measured RSS, a non-root read-only container with a writable spill
// directory, and no API token.
func TestResourcesAndSecurity(t *testing.T) {
	t.Parallel()
	m := load(t)
	cfg, _ := loadConfig(t, m)
	spec := m.deploy.Spec.Template.Spec
	c := spec.Containers[0]
	// The soft limit the command sets (GOMEMLIMIT): txn_buffer_mb + 32 MiB.
	soft := cfg.SoftMemoryLimit()
	const measuredPeak = 115 * 1000 * 1000 // RSS through a 2,000,000-row transaction (README, bench --phases memory)
	req, lim := bytesOf(t, c.Resources.Requests["memory"]), bytesOf(t, c.Resources.Limits["memory"])
	if req < measuredPeak {
		t.Errorf("memory request %s is below the measured peak RSS of 115 MB", c.Resources.Requests["memory"])
	}
	if lim < 2*soft {
		t.Errorf("memory limit %s: leave room above the soft limit txn_buffer_mb + 32 MiB = %d MiB (want at least twice)",
			c.Resources.Limits["memory"], soft>>20)
	}
	if lim < req {
		t.Errorf("memory limit %s below the request %s", c.Resources.Limits["memory"], c.Resources.Requests["memory"])
	}
	if c.Resources.Requests["cpu"] == "" {
		t.Error("no CPU request")
	}
	ps := spec.SecurityContext
	if ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == 0 {
		t.Error("the pod must run as non-root (runAsNonRoot, runAsUser)")
	}
	cs := c.SecurityContext
	if cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if !slices.Contains(cs.Capabilities.Drop, "ALL") {
		t.Error("capabilities must drop ALL")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken ||
		m.account.AutomountServiceAccountToken == nil || *m.account.AutomountServiceAccountToken {
		t.Error("the engine needs no Kubernetes API token: automountServiceAccountToken false")
	}
	if spec.ServiceAccountName != m.account.Metadata.Name {
		t.Errorf("serviceAccountName %q, the ServiceAccount is %q", spec.ServiceAccountName, m.account.Metadata.Name)
	}
	// Spilled transactions need a writable directory on a read-only root.
	spill := cfg.Postgres.SpillDir
	if spill == "" {
		spill = "/tmp" // os.TempDir() in the container
	}
	writable := false
	for _, vm := range c.VolumeMounts {
		under := spill == vm.MountPath || strings.HasPrefix(spill, vm.MountPath+"/")
		for _, v := range spec.Volumes {
			if v.Name == vm.Name && v.EmptyDir != nil && !vm.ReadOnly && under {
				writable = true
			}
		}
	}
	if !writable {
		t.Errorf("spill directory %s is not on a writable emptyDir", spill)
	}
}
