//! `deploy/`: the DaemonSet, RuntimeClass and collector manifests are valid Kubernetes 1.34 objects
//! (checked offline with PyPI's `kubernetes-validate`, which `scripts/setup --tests` installs),
//! agree with what `shimtrace install` registers and where the shims spool, and the
//! node installer script installs and undoes shimtrace on a scratch "host" (no nsenter, a stand-in
//! `systemctl` and `ctr`, a `containerd` that says it is Debian's 1.6.20, so install writes the
//! runtime-name form and gVisor's entry in the wrapper's config), with the real `shimtrace` and
//! wrapper binaries (and with a stand-in for an older `shimtrace` that has no `install --uninstall`);
//! when `install --uninstall` cannot undo it, or there is none, both configs go back as they were.
//! On a real containerd 1.6.20 with CRI, the configs the script writes run traced pods, and those
//! it puts back run pods again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shimtrace_containerd::cri::{ContainerSpec, PodSpec};
use shimtrace_containerd::install::{DEFAULT_WRAPPER_CONFIG, STATE_FILE};
use shimtrace_lab::profiles::write_runsc_cri_wrapper;
use shimtrace_span::{attr, naming::which};
use shimtrace_testkit::cli::output_ok;
use shimtrace_testkit::cri::{workload_image, CriNode, CriOptions};
use shimtrace_testkit::traced::{
    assert_runtime, built_binary, has_method, wrapper_binary, write_executable, Spooled,
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The manifests: every `deploy/*.yaml`, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// Each YAML document of `text` (split on `---` lines), without comment-only ones.
fn documents(text: &str) -> Vec<String> {
    text.split("\n---\n")
        .map(str::to_string)
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .collect()
}

/// The value of the first top-level `key:` of a document.
fn top(doc: &str, key: &str) -> String {
    doc.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
}

fn text_of(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap()
}

#[test]
fn manifests_are_valid_kubernetes_1_34() {
    let validator = which("kubernetes-validate").expect(
        "kubernetes-validate is not installed: run scripts/setup --tests (or pip install kubernetes-validate)",
    );
    let out = Command::new(&validator)
        .args(["-k", "1.34.0", "--strict"])
        .args(manifests())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for resource in [
        "namespace/shimtrace-system",
        "daemonset/shimtrace-installer",
        "daemonset/shimtrace-collector",
        "runtimeclass/traced-runc",
        "runtimeclass/traced-runsc",
        "clusterrole/shimtrace-installer",
        "role/shimtrace-installer",
    ] {
        assert!(
            text.contains(&format!(
                "passed for resource {resource} against version 1.34"
            )),
            "{resource}: {text}"
        );
    }
    // The validator does reject a broken manifest (a port given as a word).
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("collector.yaml");
    let collector = text_of("collector.yaml");
    assert!(collector.contains("containerPort: 9464"));
    std::fs::write(
        &broken,
        collector.replace("containerPort: 9464", "containerPort: metrics"),
    )
    .unwrap();
    let out = Command::new(&validator)
        .args(["-k", "1.34.0", "--strict"])
        .arg(&broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("did not validate"), "{text}");
}

#[test]
fn manifests_agree_with_install_and_the_shims() {
    let mut kinds = Vec::new();
    for file in manifests() {
        for doc in documents(&std::fs::read_to_string(&file).unwrap()) {
            kinds.push(format!("{}/{}", top(&doc, "apiVersion"), top(&doc, "kind")));
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "apps/v1/DaemonSet",
            "apps/v1/DaemonSet",
            "node.k8s.io/v1/RuntimeClass",
            "node.k8s.io/v1/RuntimeClass",
            "rbac.authorization.k8s.io/v1/ClusterRole",
            "rbac.authorization.k8s.io/v1/ClusterRoleBinding",
            "rbac.authorization.k8s.io/v1/Role",
            "rbac.authorization.k8s.io/v1/RoleBinding",
            "v1/Namespace",
            "v1/ServiceAccount",
        ]
    );

    // Each RuntimeClass names a handler `shimtrace install` registers (traced-runsc where runsc
    // is installed, as it is on this machine).
    let bin = tempfile::tempdir().unwrap();
    let out = Command::new(built_binary("shimtrace"))
        .args(["install", "--config-version", "2", "--wrapper"])
        .arg(wrapper_binary())
        .arg("--bin-dir")
        .arg(bin.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", log(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    let registered: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("handler: "))
        .collect();
    assert!(registered.contains(&"traced-runc"), "{printed}");
    let classes = documents(&text_of("runtimeclasses.yaml"));
    // No traced-runsc without runsc (in either form: the runtime-name form registers it through
    // the wrapper's config).
    let no_gvisor = which("runsc").is_none();
    for class in &classes {
        let handler = top(class, "handler");
        assert!(
            no_gvisor && handler == "traced-runsc" || registered.contains(&handler.as_str()),
            "RuntimeClass handler {handler} is not among {registered:?}"
        );
        assert!(class.contains("shimtrace/installed: \"true\""), "{class}");
    }

    // The collector reads where the shims spool, and exports where OpenTelemetry says.
    let collector = text_of("collector.yaml");
    assert!(collector.contains(&format!(
        "--spool={}",
        shimtrace_span::spool::DEFAULT_SPOOL_DIR
    )));
    let state_dir = Path::new(shimtrace_span::spool::DEFAULT_SPOOL_DIR)
        .parent()
        .unwrap();
    assert!(collector.contains(&format!("path: {}", state_dir.display())));
    assert!(collector.contains("--metrics-addr=0.0.0.0:9464"));
    // What the collector's export makes of the manifest's OTEL variables: gRPC to OTLP's gRPC port
    // (the protocol defaults to http/protobuf, which that port does not speak).
    let env_value = |name: &str| {
        let mut lines = collector
            .lines()
            .skip_while(|l| l.trim() != format!("- name: {name}"));
        lines.next()?;
        lines
            .next()?
            .trim()
            .strip_prefix("value: ")
            .map(str::to_owned)
    };
    let export = shimtrace_collector::export::ExportConfig::resolve(
        &Default::default(),
        |name| env_value(name),
        true,
    )
    .unwrap()
    .expect("the collector manifest names an OTLP endpoint");
    assert_eq!(
        export.protocol,
        shimtrace_collector::export::Protocol::Grpc,
        "{}",
        export.endpoint
    );
    assert!(export.endpoint.ends_with(":4317"), "{}", export.endpoint);

    // The installer runs the script's `run`, its preStop the script's `stop`, on the same image.
    let installer = text_of("installer.yaml");
    let script = std::fs::read_to_string(deploy_dir().join("image/shimtrace-node")).unwrap();
    for (manifest_line, arm) in [
        (
            "command: [\"/usr/local/bin/shimtrace-node\", \"run\"]",
            "\nrun)",
        ),
        (
            "command: [\"/usr/local/bin/shimtrace-node\", \"stop\"]",
            "\nstop)",
        ),
    ] {
        assert!(installer.contains(manifest_line), "{manifest_line}");
        assert!(script.contains(arm), "the script handles {arm}");
    }
    let image = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("image: "))
            .unwrap()
            .to_string()
    };
    assert_eq!(image(&installer), image(&collector));
    let dockerfile = std::fs::read_to_string(deploy_dir().join("image/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY deploy/image/shimtrace-node /usr/local/bin/shimtrace-node"));
    assert!(installer.contains("hostPID: true") && installer.contains("privileged: true"));

    let syntax = Command::new("bash")
        .arg("-n")
        .arg(deploy_dir().join("image/shimtrace-node"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    if let Some(shellcheck) = which("shellcheck") {
        output_ok(Command::new(shellcheck).arg(deploy_dir().join("image/shimtrace-node")));
    }
}

/// A scratch node: the script's host paths under one directory, `systemctl`, `ctr`, `containerd`
/// (1.6.20) and `runsc` stand-ins first on PATH (the real containerd shims after them, for
/// `shimtrace install` to find).
struct ScratchNode {
    dir: tempfile::TempDir,
}

/// The `shimtrace` in a scratch node's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeShimtrace {
    /// The one under test.
    Built,
    /// An older one's stand-in: the built binary, except that `install --help` does not offer
    /// `--uninstall` and the flag is refused.
    WithoutUninstall,
}

const ORIGINAL_CONFIG: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
"#;

impl ScratchNode {
    fn new() -> ScratchNode {
        ScratchNode::with(NodeShimtrace::Built)
    }

    fn with(shimtrace: NodeShimtrace) -> ScratchNode {
        let node = ScratchNode {
            dir: tempfile::tempdir().unwrap(),
        };
        for dir in ["artifacts", "fake", "etc/containerd", "bin"] {
            std::fs::create_dir_all(node.path(dir)).unwrap();
        }
        match shimtrace {
            NodeShimtrace::Built => {
                std::fs::copy(built_binary("shimtrace"), node.path("artifacts/shimtrace")).unwrap();
            }
            NodeShimtrace::WithoutUninstall => node.script(
                "artifacts/shimtrace",
                &format!(
                    "real={real}\n\
                     if [ \"$1\" = install ]; then\n\
                     for a in \"$@\"; do\n\
                     [ \"$a\" = --uninstall ] && {{ echo \"error: unexpected argument '--uninstall' found\" >&2; exit 2; }}\n\
                     [ \"$a\" = --help ] && {{ \"$real\" \"$@\" | grep -v -e --uninstall; exit 0; }}\n\
                     done\n\
                     fi\n\
                     exec \"$real\" \"$@\"\n",
                    real = built_binary("shimtrace").display()
                ),
            ),
        }
        std::fs::copy(
            wrapper_binary(),
            node.path("artifacts/containerd-shim-traced-v2"),
        )
        .unwrap();
        // `ctr plugins ls`: CRI ok, or what $FAKE_CRI_AFTER_RESTART says once restarted; listed
        // as containerd 1.x lists it, or with $FAKE_CTR_PLUGINS=2 as 2.x does (its gRPC service
        // still `cri`, the plugin that can fail to load `io.containerd.cri.v1 runtime`).
        node.script(
            "fake/ctr",
            &format!(
                "status=ok\n[ -e {restarts} ] && status=${{FAKE_CRI_AFTER_RESTART:-ok}}\n\
                 echo 'TYPE                  ID       PLATFORMS    STATUS'\n\
                 if [ \"${{FAKE_CTR_PLUGINS:-1}}\" = 2 ]; then\n\
                 echo 'io.containerd.cri.v1  images   -            ok'\n\
                 echo \"io.containerd.cri.v1  runtime  linux/amd64  $status\"\n\
                 echo 'io.containerd.grpc.v1 cri      -            ok'\n\
                 else\n\
                 echo \"io.containerd.grpc.v1 cri      linux/amd64  $status\"\n\
                 fi\n",
                restarts = node.path("restarts").display()
            ),
        );
        node.script(
            "fake/systemctl",
            &format!("echo \"$*\" >> {}\n", node.path("restarts").display()),
        );
        node.script(
            "fake/containerd",
            "echo 'containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1'\n",
        );
        node.script("fake/runsc", "exit 1\n");
        std::fs::write(node.config(), ORIGINAL_CONFIG).unwrap();
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("etc/containerd/config.toml")
    }

    /// The wrapper's config on this "host" (`SHIMTRACE_WRAPPER_CONFIG`), never the machine's.
    fn wrapper_config(&self) -> PathBuf {
        self.path("etc/shimtrace/config.toml")
    }

    fn wrapper_config_text(&self) -> Option<String> {
        std::fs::read_to_string(self.wrapper_config()).ok()
    }

    fn script(&self, rel: &str, body: &str) {
        write_executable(&self.path(rel), &format!("#!/bin/sh\n{body}"));
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.path("restarts"))
            .map(|t| t.lines().filter(|l| *l == "restart containerd").count())
            .unwrap_or(0)
    }

    /// Links in the scratch bin dir.
    fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn run(&self, action: &str, env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.path("fake").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(deploy_dir().join("image/shimtrace-node"));
        command
            .arg(action)
            .env("PATH", path)
            .env("HOST_ROOT", "")
            .env("SHIMTRACE_HOST_EXEC", "")
            .env("SHIMTRACE_ARTIFACTS", self.path("artifacts"))
            .env("SHIMTRACE_PREFIX", self.path("opt/shimtrace"))
            .env("SHIMTRACE_BIN_DIR", self.path("bin"))
            .env("CONTAINERD_CONFIG", self.config())
            .env("CONTAINERD_BIN", self.path("fake/containerd"))
            .env("SHIMTRACE_WRAPPER_CONFIG", self.wrapper_config())
            .env("SHIMTRACE_READY_FILE", self.path("ready"))
            .env_remove("KUBERNETES_SERVICE_HOST");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    }

    /// Runs `action`, which must succeed; what it printed.
    fn succeeds(&self, action: &str, env: &[(&str, &str)]) -> String {
        let out = self.run(action, env);
        assert!(out.status.success(), "{}", log(&out));
        log(&out)
    }

    /// Runs `action`, which must fail; what it printed.
    fn fails(&self, action: &str, env: &[(&str, &str)]) -> String {
        let out = self.run(action, env);
        assert!(!out.status.success(), "{}", log(&out));
        log(&out)
    }
}

fn log(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The installer's output says `text`.
fn assert_says(said: &str, text: &str) {
    assert!(said.contains(text), "expected `{text}` in:\n{said}");
}

fn toml_of(path: &Path) -> toml::Table {
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

/// Whether `shimtrace` (a path) offers `install --uninstall`, as the script asks it.
fn offers_uninstall(shimtrace: &Path) -> bool {
    let help = Command::new(shimtrace)
        .args(["install", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "{}", log(&help));
    String::from_utf8_lossy(&help.stdout).contains("--uninstall")
}

#[test]
fn the_scratch_nodes_shimtrace_is_the_built_one_or_an_older_stand_in() {
    // The built shimtrace removes its own entries, which the script then does instead of putting
    // the saved configs back; the stand-in for an older one has no such flag.
    assert!(offers_uninstall(&built_binary("shimtrace")));
    let node = ScratchNode::new();
    assert!(offers_uninstall(&node.path("artifacts/shimtrace")));
    let old = ScratchNode::with(NodeShimtrace::WithoutUninstall);
    let stand_in = old.path("artifacts/shimtrace");
    assert!(!offers_uninstall(&stand_in));
    let refused = Command::new(&stand_in)
        .args(["install", "--uninstall"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", log(&refused));
}

/// gVisor's entry as install writes it into the wrapper's config in the runtime-name form.
const GVISOR_ENTRY: &str = "[runtimes.\"io.containerd.traced-runsc.v2\"]";

#[test]
fn node_installer_installs_and_undoes_on_a_scratch_host() {
    installs_and_undoes(NodeShimtrace::Built);
}

#[test]
fn node_installer_installs_and_undoes_with_a_shimtrace_without_uninstall() {
    installs_and_undoes(NodeShimtrace::WithoutUninstall);
}

fn installs_and_undoes(shimtrace: NodeShimtrace) {
    let machine_config = || std::fs::read(DEFAULT_WRAPPER_CONFIG).ok();
    let machine_config_before = machine_config();
    let node = ScratchNode::with(shimtrace);
    node.succeeds("install", &[]);
    // The binaries on the "host", the traced handlers in its config, containerd restarted once.
    let prefix = node.path("opt/shimtrace/bin");
    for binary in ["shimtrace", "containerd-shim-traced-v2"] {
        assert!(prefix.join(binary).is_file(), "{binary}");
    }
    let wrapper = prefix.join("containerd-shim-traced-v2");
    let link = node.path("bin/containerd-shim-traced-runc-v2");
    assert_eq!(std::fs::read_link(&link).unwrap(), wrapper);
    let config = toml_of(&node.config());
    let runtimes = &config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    // Either form `shimtrace install` writes names the link: by path, or by runtime name (then
    // containerd finds the link on its PATH, where the installer puts it).
    let traced = &runtimes["traced-runc"];
    assert!(
        traced.get("runtime_path").and_then(|p| p.as_str()) == link.to_str()
            || traced["runtime_type"].as_str() == Some("io.containerd.traced-runc.v2"),
        "{traced:?}"
    );
    // The default runtime untouched.
    assert_eq!(
        runtimes["runc"],
        toml_of_str(ORIGINAL_CONFIG)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
            ["runtimes"]["runc"]
    );
    assert_eq!(node.restarts(), 1);
    assert!(node.path("ready").exists());
    // containerd 1.6.20: gVisor through the wrapper's config, the one the script was told.
    let wrapper_config = node.wrapper_config_text().unwrap_or_default();
    assert!(wrapper_config.contains(GVISOR_ENTRY), "{wrapper_config}");
    // Installing again (the pod replaced) changes nothing that uninstall needs.
    node.succeeds("install", &[]);
    assert_eq!(node.restarts(), 2);

    // `stop` outside a cluster cannot tell the DaemonSet is going: the node stays installed.
    let said = node.succeeds("stop", &[]);
    assert_says(&said, "leaving the node installed");
    assert!(link.exists());

    node.succeeds("uninstall", &[]);
    assert_eq!(toml_of(&node.config()), toml_of_str(ORIGINAL_CONFIG));
    // Without `install --uninstall` the saved config goes back, byte for byte.
    if shimtrace == NodeShimtrace::WithoutUninstall {
        assert_eq!(
            std::fs::read_to_string(node.config()).unwrap(),
            ORIGINAL_CONFIG
        );
    }
    assert_eq!(node.links(), Vec::<String>::new());
    assert!(!node.path("opt/shimtrace").exists());
    assert!(!node.path("ready").exists());
    assert_eq!(node.restarts(), 3);
    // The wrapper's config did not exist before: it is gone again.
    assert_eq!(node.wrapper_config_text(), None);
    assert_eq!(
        machine_config(),
        machine_config_before,
        "the installer changed the machine's {DEFAULT_WRAPPER_CONFIG}"
    );
}

fn toml_of_str(text: &str) -> toml::Table {
    text.parse().unwrap()
}

#[test]
fn node_installer_never_leaves_cri_broken_nor_undoes_someone_elses_edit() {
    // containerd's CRI plugin fails to load after the restart: the old config goes back, whether
    // `ctr plugins ls` lists it as containerd 1.x or as 2.x does.
    for plugins in ["1", "2"] {
        let node = ScratchNode::new();
        let said = node.fails(
            "install",
            &[
                ("FAKE_CRI_AFTER_RESTART", "error"),
                ("FAKE_CTR_PLUGINS", plugins),
            ],
        );
        assert_says(&said, "does not load with the new config");
        assert_eq!(
            std::fs::read_to_string(node.config()).unwrap(),
            ORIGINAL_CONFIG
        );
        assert_eq!(
            node.restarts(),
            2,
            "restarted with the new config, then the old"
        );
        assert!(!node.path("ready").exists());
        // The wrapper's config, which install created for gVisor's entry, is gone too.
        assert_eq!(node.wrapper_config_text(), None);
    }

    // Someone edits the config after the install: `install --uninstall` removes only its own
    // entries; without it, the script will not put back a config that would lose the edit, and
    // keeps what it refers to.
    for shimtrace in [NodeShimtrace::Built, NodeShimtrace::WithoutUninstall] {
        let node = ScratchNode::with(shimtrace);
        node.succeeds("install", &[]);
        let mut edited = std::fs::read_to_string(node.config()).unwrap();
        edited.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.mine]\n  runtime_type = \"io.containerd.runc.v2\"\n");
        std::fs::write(node.config(), &edited).unwrap();
        match shimtrace {
            NodeShimtrace::Built => {
                node.succeeds("uninstall", &[]);
                let config = std::fs::read_to_string(node.config()).unwrap();
                assert!(
                    config.contains("runtimes.mine") && !config.contains("traced-"),
                    "{config}"
                );
            }
            NodeShimtrace::WithoutUninstall => {
                let said = node.fails("uninstall", &[]);
                assert_says(&said, "changed since shimtrace installed it");
                assert_eq!(std::fs::read_to_string(node.config()).unwrap(), edited);
                assert!(node.path("bin/containerd-shim-traced-runc-v2").exists());
            }
        }
    }
}

/// A wrapper config the node had before shimtrace: an entry of its own.
const NODE_WRAPPER_CONFIG: &str = "# the node's own\n[runtimes.\"io.containerd.traced-kata.v2\"]\ninner = \"/usr/bin/containerd-shim-kata-v2\"\n";

#[test]
fn node_installer_puts_both_configs_back_when_uninstall_cannot() {
    puts_both_configs_back(NodeShimtrace::Built);
}

#[test]
fn node_installer_puts_both_configs_back_without_uninstall() {
    puts_both_configs_back(NodeShimtrace::WithoutUninstall);
}

fn puts_both_configs_back(shimtrace: NodeShimtrace) {
    let node = ScratchNode::with(shimtrace);
    std::fs::create_dir_all(node.path("etc/shimtrace")).unwrap();
    std::fs::write(node.wrapper_config(), NODE_WRAPPER_CONFIG).unwrap();
    node.succeeds("install", &[]);
    let installed = node.wrapper_config_text().unwrap();
    assert!(
        installed.contains(GVISOR_ENTRY) && installed.contains("traced-kata"),
        "{installed}"
    );
    // `install --uninstall` fails (its state file is gone): the script puts back both configs as
    // they were before the install, since nobody changed them since.
    std::fs::remove_file(node.path(&format!("etc/containerd/{STATE_FILE}"))).unwrap();
    let said = node.succeeds("uninstall", &[]);
    match shimtrace {
        NodeShimtrace::Built => assert_says(&said, "putting back the configs saved at install"),
        // An older shimtrace is not asked to uninstall: the saved configs go back directly.
        NodeShimtrace::WithoutUninstall => {
            assert!(!said.contains("install --uninstall failed"), "{said}")
        }
    }
    assert_eq!(
        std::fs::read_to_string(node.config()).unwrap(),
        ORIGINAL_CONFIG
    );
    assert_eq!(
        node.wrapper_config_text().as_deref(),
        Some(NODE_WRAPPER_CONFIG)
    );
    assert_eq!(node.links(), Vec::<String>::new());

    // Someone edits the wrapper's config after the install: the script puts back neither config,
    // says which one changed and what to remove by hand, and keeps what they refer to.
    let node = ScratchNode::with(shimtrace);
    node.succeeds("install", &[]);
    let config = std::fs::read_to_string(node.config()).unwrap();
    let mut edited = node.wrapper_config_text().unwrap();
    edited.push_str("\n# edited on the node\n");
    std::fs::write(node.wrapper_config(), &edited).unwrap();
    std::fs::remove_file(node.path(&format!("etc/containerd/{STATE_FILE}"))).unwrap();
    let said = node.fails("uninstall", &[]);
    assert!(
        said.contains(&format!(
            "{} changed since shimtrace installed it",
            node.wrapper_config().display()
        )) && said.contains("by hand"),
        "{said}"
    );
    assert_eq!(node.wrapper_config_text().as_deref(), Some(edited.as_str()));
    assert_eq!(std::fs::read_to_string(node.config()).unwrap(), config);
    assert!(node.path("bin/containerd-shim-traced-runc-v2").exists());
}

/// The node installer on a real containerd with CRI, Debian bookworm's 1.6.20 (the runtime-name
/// form, gVisor through the wrapper's config): containerd restarted on the configs the script
/// wrote runs pods traced under `traced-runc` and `traced-runsc`, through the links to the
/// binaries the script placed; after the script's uninstall, the configs are back byte for byte
/// and containerd restarted on them runs a pod under its default runtime, untraced. (The script's
/// own restart is a no-op here: the test restarts its private containerd itself; the rollback is
/// covered on the scratch host above.)
#[test]
fn node_installer_configs_run_pods_on_real_containerd() {
    let mut cri_node = CriNode::start(
        "1.6.20",
        CriOptions {
            install: false,
            ..Default::default()
        },
    )
    .expect("CRI node");
    let node = ScratchNode::new();
    // gVisor for host-network pods here (the lab's runsc wrapper for CRI), as the `runsc` the
    // script's `shimtrace install` finds on its PATH.
    let runsc = write_runsc_cri_wrapper(&node.path("gvisor"), Path::new("/usr/bin/runsc")).unwrap();
    std::fs::copy(&runsc, node.path("fake/runsc")).unwrap();
    let traced = &cri_node.traced;
    let config = traced.containerd.config_path();
    let config_before = std::fs::read_to_string(&config).unwrap();
    let wrapper_config = traced.wrapper_config.clone();
    let wrapper_config_before = std::fs::read_to_string(&wrapper_config).unwrap();
    let paths = [
        ("CONTAINERD_CONFIG", config.clone()),
        ("CONTAINERD_BIN", traced.containerd.version().containerd()),
        ("SHIMTRACE_BIN_DIR", traced.bin_dir.clone()),
        ("SHIMTRACE_WRAPPER_CONFIG", wrapper_config.clone()),
    ]
    .map(|(key, path)| (key, path.display().to_string()));
    let mut env: Vec<(&str, &str)> = paths.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("CONTAINERD_RESTART", "true"));
    node.succeeds("install", &env);
    let placed = node.path("opt/shimtrace/bin/containerd-shim-traced-v2");
    for link in [
        "containerd-shim-traced-runc-v2",
        "containerd-shim-traced-runsc-v2",
    ] {
        assert_eq!(
            std::fs::read_link(traced.bin_dir.join(link)).ok().as_ref(),
            Some(&placed),
            "{link} leads to the wrapper the script placed"
        );
    }
    cri_node
        .restart_containerd()
        .expect("containerd restarts on the installed configs");
    assert_eq!(
        cri_node
            .plugin_status("io.containerd.grpc.v1", "cri")
            .as_deref(),
        Some("ok")
    );

    for (handler, runtime) in [("traced-runc", "runc"), ("traced-runsc", "runsc")] {
        let [_, id] = run_quits(&cri_node, runtime, handler);
        let spans = cri_node.await_spans(&id, Duration::from_secs(15), |s| {
            has_method(s, "Create") && has_method(s, "Wait")
        });
        let create = spans.iter().find(|s| s.name.ends_with("/Create")).unwrap();
        assert_eq!(create.attr_str(attr::CONTAINER_RUNTIME_NAME), Some(runtime));
        if runtime == "runsc" {
            assert_runtime(create, "runsc", "config");
        }
    }

    node.succeeds("uninstall", &env);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), config_before);
    assert_eq!(
        std::fs::read_to_string(&wrapper_config).unwrap(),
        wrapper_config_before
    );
    cri_node
        .restart_containerd()
        .expect("containerd restarts on the configs put back");
    for id in run_quits(&cri_node, "plain", "") {
        assert!(
            cri_node.spans_of(&id).is_empty(),
            "no spans for the default runtime's {id}"
        );
    }
}

/// Runs pod `node-<name>` under `handler` with one container that exits 3, checks that exit and
/// removes the pod; returns the sandbox's id and the container's.
fn run_quits(node: &CriNode, name: &str, handler: &str) -> [String; 2] {
    let pod = PodSpec::new(format!("node-{name}"), handler);
    let quits = ContainerSpec::new("quits", workload_image(), ["/bin/sh", "-c", "exit 3"]);
    let run = node
        .run_pod(&pod, &[quits])
        .unwrap_or_else(|e| panic!("a pod under {handler:?}: {e}"));
    let exited = node
        .block_on(
            node.cri()
                .wait_exited(&run.containers[0], Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(exited.exit_code, 3, "{exited:?}");
    node.remove_pod(run.id()).unwrap();
    [run.id().to_string(), run.containers[0].clone()]
}

#[test]
fn node_installer_on_containerd_2_2_finds_and_undoes_its_drop_in() {
    let on_2_2 = || {
        let node = ScratchNode::new();
        node.script(
            "fake/containerd",
            "echo 'containerd github.com/containerd/containerd/v2 v2.2.0 0123456789ab'\n",
        );
        node
    };
    let drop_in = |node: &ScratchNode| node.path("etc/containerd/conf.d/shimtrace.toml");
    let node = on_2_2();
    let said = node.succeeds("install", &[]);
    // The handlers are in the drop-in, which is what the script reports (and labels the node by).
    let written = std::fs::read_to_string(drop_in(&node)).unwrap();
    assert!(written.contains("runtimes.traced-runsc]"), "{written}");
    let handlers: Vec<&str> = said
        .lines()
        .find_map(|l| l.strip_prefix("shimtrace-node: installed: handlers "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        handlers.contains(&"traced-runc") && handlers.contains(&"traced-runsc"),
        "{said}"
    );
    assert!(std::fs::read_to_string(node.config())
        .unwrap()
        .contains(&drop_in(&node).display().to_string()));
    node.succeeds("uninstall", &[]);
    assert_eq!(toml_of(&node.config()), toml_of_str(ORIGINAL_CONFIG));
    assert!(!drop_in(&node).exists());

    // `install --uninstall` fails (its state file is gone): the config goes back as it was and
    // the drop-in, which did not exist, is removed: nothing is left for containerd to import.
    let node = on_2_2();
    node.succeeds("install", &[]);
    std::fs::remove_file(node.path(&format!("etc/containerd/{STATE_FILE}"))).unwrap();
    node.succeeds("uninstall", &[]);
    assert_eq!(
        std::fs::read_to_string(node.config()).unwrap(),
        ORIGINAL_CONFIG
    );
    assert!(!drop_in(&node).exists());
    assert_eq!(node.links(), Vec::<String>::new());

    // CRI does not load after the restart: the drop-in goes with the config's import.
    let node = on_2_2();
    let said = node.fails(
        "install",
        &[
            ("FAKE_CRI_AFTER_RESTART", "error"),
            ("FAKE_CTR_PLUGINS", "2"),
        ],
    );
    assert_says(&said, "does not load with the new config");
    assert_eq!(
        std::fs::read_to_string(node.config()).unwrap(),
        ORIGINAL_CONFIG
    );
    assert!(!drop_in(&node).exists());
}
