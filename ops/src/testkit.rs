//! Starts real services for tests, each on a free port with a private temp dir, and removes
//! everything on drop so tests can run side by side and leave nothing behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not listen on port {port} within 20 s")
}

/// A `nats-server` with JetStream on, killed and its store deleted on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

/// The largest message the test server takes: an execution result carries two output streams of
/// up to 1 MiB each (nats-server's default is 1 MB, and no flag sets it).
const NATS_MAX_PAYLOAD: &str = "8MB";

impl NatsServer {
    pub fn start() -> anyhow::Result<Self> {
        let store = tempfile::tempdir().context("making the JetStream store dir")?;
        let config = store.path().join("nats-server.conf");
        std::fs::write(&config, format!("max_payload: {NATS_MAX_PAYLOAD}\n"))
            .context("writing the nats-server configuration")?;
        let port = free_port()?;
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (install it: apt-get install nats-server)")?;
        wait_for_port(port, &mut child, "nats-server")?;
        Ok(Self {
            child,
            port,
            _store: store,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (the benchmark reads its memory and CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory holding PostgreSQL's server programs (`initdb`, `pg_ctl`).
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("reading {} (apt-get install postgresql)", root.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server found under /usr/lib/postgresql")
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root (initdb refuses root).
fn postgres_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A private PostgreSQL cluster, stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    data: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    pub fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let as_postgres = is_root();
        let data = tempfile::Builder::new()
            .prefix("sandbox-pg-")
            .tempdir()
            .context("making the PostgreSQL data dir")?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(data.path())
                .status()?;
            if !status.success() {
                bail!("chown of the PostgreSQL data dir failed");
            }
        }
        let cluster = data.path().join("cluster");
        let out = postgres_command(&bin.join("initdb"), as_postgres)
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&cluster)
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            data.path().display()
        );
        let out = postgres_command(&bin.join("pg_ctl"), as_postgres)
            .args(["-w", "-t", "30", "-D"])
            .arg(&cluster)
            .args(["-o", &options, "-l"])
            .arg(data.path().join("log"))
            .arg("start")
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                std::fs::read_to_string(data.path().join("log")).unwrap_or_default()
            );
        }
        Ok(Self {
            data,
            bin,
            port,
            as_postgres,
        })
    }

    /// A URL for the `postgres` database of this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates another database and returns its URL, for tests sharing one cluster.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
            ])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "CREATE DATABASE failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = postgres_command(&self.bin.join("pg_ctl"), self.as_postgres)
            .args(["-m", "immediate", "-D"])
            .arg(self.data.path().join("cluster"))
            .arg("stop")
            .output();
    }
}

/// A name no other test run uses, for node ids, networks and databases.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Every container, running or not, whose `label` is `value` (see `messages::labels`).
pub async fn containers_labelled(
    label: &str,
    value: &str,
) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let docker = bollard::Docker::connect_with_local_defaults()?;
    let filters = std::collections::HashMap::from([("label", vec![format!("{label}={value}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker.list_containers(Some(options)).await?)
}

/// The ids of the running, unclaimed warm containers of `template_id` (on any node of this
/// engine).
pub async fn warm_containers(template_id: &str) -> anyhow::Result<Vec<String>> {
    Ok(
        containers_labelled(messages::labels::WARM_POOL, template_id)
            .await?
            .into_iter()
            .filter(|container| {
                container.state.as_ref().map(ToString::to_string).as_deref() == Some("running")
                    && container.names.as_ref().is_some_and(|names| {
                        names.iter().any(|name| name.starts_with("/sandbox-pool-"))
                    })
            })
            .filter_map(|container| container.id)
            .collect(),
    )
}

/// Removes every container labelled with `node_id` and the network `network`, so a test leaves
/// no Docker objects behind even when it failed half-way.
pub async fn remove_docker_objects(node_id: &str, network: &str) -> anyhow::Result<()> {
    use bollard::query_parameters::RemoveContainerOptionsBuilder;
    let docker = bollard::Docker::connect_with_local_defaults()?;
    for container in containers_labelled(messages::labels::NODE_ID, node_id).await? {
        if let Some(id) = container.id {
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
    if let Ok(inspect) = docker.inspect_network(network, None).await {
        let bridge = inspect
            .options
            .as_ref()
            .and_then(|options| options.get("com.docker.network.bridge.name").cloned())
            .or_else(|| {
                inspect
                    .id
                    .as_deref()
                    .and_then(|id| id.get(..12))
                    .map(|id| format!("br-{id}"))
            });
        if let Some(bridge) = bridge {
            remove_egress_rules(&bridge);
        }
    }
    let _ = docker.remove_network(network).await;
    Ok(())
}

/// Removes the egress hooks a node daemon put in for `bridge` (from `DOCKER-USER`, `FORWARD`
/// and `INPUT`) and the chains they lead to (its node chains and its sandboxes' chains), so a
/// test leaves no iptables rules behind.
pub fn remove_egress_rules(bridge: &str) {
    let iptables = |args: &[&str]| -> Option<String> {
        let output = Command::new("iptables")
            .arg("-w")
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    // The chain a rule jumps (`-j`) or goes (`-g`) to.
    let target = |line: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "-j" || word == "-g" {
                return words.next().map(str::to_owned);
            }
        }
        None
    };
    let mut chains = Vec::new();
    for hook_chain in ["DOCKER-USER", "FORWARD", "INPUT"] {
        let listing = iptables(&["-S", hook_chain]).unwrap_or_default();
        let prefix = format!("-A {hook_chain} -i {bridge} ");
        for line in listing.lines().filter(|line| line.starts_with(&prefix)) {
            let Some(chain) = target(line) else { continue };
            if matches!(chain.as_str(), "ACCEPT" | "DROP" | "RETURN" | "REJECT") {
                continue;
            }
            let _ = iptables(&["-D", hook_chain, "-i", bridge, "-j", &chain]);
            if !chains.contains(&chain) {
                chains.push(chain);
            }
        }
    }
    for chain in chains {
        let sandboxes: Vec<String> = iptables(&["-S", &chain])
            .unwrap_or_default()
            .lines()
            .filter_map(target)
            .filter(|to| to.starts_with(chain.trim_end_matches("-FWD")) && *to != chain)
            .collect();
        for name in std::iter::once(chain).chain(sandboxes) {
            let _ = iptables(&["-F", &name]);
            let _ = iptables(&["-X", &name]);
        }
    }
}

/// Unmounts the sandbox disks a node daemon left mounted under `state_dir` (it was stopped
/// before their containers went), so the temp dir can go.
pub fn release_volumes_under(state_dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let root = state_dir.to_string_lossy().into_owned();
    for mount_point in mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(root.as_str()))
    {
        let _ = Command::new("umount").arg("-l").arg(mount_point).status();
    }
}

/// How long a create still in flight in a daemon when a test fails may take to finish.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(3);

/// [`remove_docker_objects`] for each of `node_ids`, from a `Drop`: on a thread with a runtime
/// of its own, since the caller's runtime may be shutting down or blocked in the drop. When the
/// thread is panicking (a failed test may leave a create in flight), a second pass follows
/// after a grace to catch what that create makes.
pub fn remove_docker_objects_blocking(node_ids: &[String], network: &str) {
    let passes = if std::thread::panicking() { 2 } else { 1 };
    let node_ids = node_ids.to_vec();
    let network = network.to_owned();
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(runtime) = runtime else {
            eprintln!("no runtime to clean up the Docker objects of {node_ids:?}");
            return;
        };
        for pass in 1..=passes {
            if pass > 1 {
                std::thread::sleep(IN_FLIGHT_GRACE);
            }
            for node_id in &node_ids {
                if let Err(error) = runtime.block_on(remove_docker_objects(node_id, &network)) {
                    eprintln!("cleaning up {node_id}: {error:#}");
                }
            }
        }
    });
    let _ = cleanup.join();
}

/// Checks the locked-down host configuration the node daemon gives every sandbox container: the
/// template's CPU, memory (and no swap beyond it) and process limits, every capability dropped,
/// `no-new-privileges`, no docker-init (the agent is PID 1), no network, not privileged, a
/// read-only root with only the sandbox's own disk bound in (no host paths, no Docker socket),
/// a bounded `/dev/shm`, and no core dumps. Panics at the first difference: for tests.
#[track_caller]
pub fn assert_locked_down(
    host: &bollard::models::HostConfig,
    cpu_cores: f64,
    memory_mb: i64,
    pids_limit: i64,
) {
    let memory = memory_mb * 1024 * 1024;
    assert_eq!(
        host.nano_cpus,
        Some((cpu_cores * 1e9).round() as i64),
        "CPU"
    );
    assert_eq!(host.memory, Some(memory), "memory");
    assert_eq!(host.memory_swap, Some(memory), "memory with swap");
    assert_eq!(host.pids_limit, Some(pids_limit), "processes");
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.init, Some(false), "the executor agent is PID 1");
    assert_ne!(host.privileged, Some(true));
    assert_eq!(host.readonly_rootfs, Some(true), "read-only root");
    assert!(
        host.binds.as_ref().is_none_or(Vec::is_empty),
        "host paths: {:?}",
        host.binds
    );
    let mounts = host.mounts.clone().unwrap_or_default();
    let targets: Vec<&str> = mounts.iter().filter_map(|m| m.target.as_deref()).collect();
    assert_eq!(
        targets,
        ["/workspace", "/tmp", "/var/tmp"],
        "writable places"
    );
    for mount in &mounts {
        let source = mount.source.as_deref().unwrap_or_default();
        assert!(
            source.contains("/volumes/")
                && source.contains("/sandbox-")
                && !source.contains("docker.sock"),
            "a mount from outside the sandbox's own volume: {source}"
        );
    }
    assert_eq!(host.shm_size, Some(64 * 1024 * 1024), "/dev/shm");
    let ulimits = host.ulimits.clone().unwrap_or_default();
    let limit = |name: &str| {
        ulimits
            .iter()
            .find(|ulimit| ulimit.name.as_deref() == Some(name))
            .and_then(|ulimit| ulimit.hard)
    };
    assert_eq!(limit("core"), Some(0), "core dumps");
    assert_eq!(limit("nofile"), Some(4096), "open files");
}

/// A tiny image for tests of container handling: Debian's static busybox in an empty root,
/// imported (nothing is pulled). Its default command sleeps forever. Built once per machine.
pub const TEST_IMAGE: &str = "sandbox-test-busybox:1";

/// Builds [`TEST_IMAGE`] if Docker does not have it yet.
pub fn ensure_test_image() -> anyhow::Result<&'static str> {
    let present = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running docker")?
        .success();
    if present {
        return Ok(TEST_IMAGE);
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: apt-get install busybox-static");
    }
    let root = tempfile::tempdir()?;
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    for applet in [
        "sh", "sleep", "cat", "echo", "ls", "true", "false", "kill", "ps",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    std::fs::create_dir_all(root.path().join("tmp"))?;
    let script = format!(
        "tar -C {} -c . | docker import --change 'CMD [\"/bin/sleep\", \"infinity\"]' - {TEST_IMAGE}",
        root.path().display()
    );
    let out = Command::new("sh").args(["-c", &script]).output()?;
    if !out.status.success() {
        bail!(
            "importing {TEST_IMAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(TEST_IMAGE)
}
