//! Recording a start's trace (overlaybd's `ctr record-trace`, `../shared/reference/overlaybd.md`
//! §5.5) through containerd's API, without `ctr`: the image is pulled lazily ([`crate::rpull`]),
//! a container's snapshot is prepared with the two record-trace labels (the snapshotter starts
//! the daemon's recording on the image's device), the container runs as containerd's runc
//! shim runs it for `ctr run` (a default runtime spec with the image's command, environment,
//! working directory and user, its own network namespace, stdio to `/dev/null`), is stopped
//! after the given time (SIGTERM, then SIGKILL), and the trace is collected overlaybd's way:
//! `<trace>.lock` removed, `<trace>.ok` awaited. Everything the run made is removed again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use containerd_client::services::v1 as containers;
use containerd_client::services::v1 as tasks;
use containerd_client::services::v1::snapshots;
use overlaybd_oci::label as labels;

use crate::rpull::{self, Pulled};
use crate::{status, Containerd, Error, Result};

/// How a trace is recorded.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// How the image is pulled (containerd's socket, namespace, snapshotter, registry).
    pub pull: rpull::Options,
    /// How long the container runs before it is stopped.
    pub time: Duration,
    /// The command (default: the image's entrypoint and command).
    pub command: Vec<String>,
    /// Where the trace is written (a fresh temporary directory under it).
    pub work_dir: Option<PathBuf>,
}

/// containerd's runc shim, as `ctr run` uses it.
const RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Records the trace of `image` (a registry reference of an overlaybd image) starting and
/// running for `opts.time`; returns the trace file's bytes. Blocking.
pub fn record_trace(image: &str, opts: &RecordOptions) -> Result<Vec<u8>> {
    let work = match &opts.work_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("record-trace-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("record-trace-").tempdir(),
    }
    .map_err(|e| Error::io("create", "a work directory", e))?;
    let trace = work.path().join("trace");
    std::fs::write(&trace, b"").map_err(|e| Error::io("create", trace.display().to_string(), e))?;
    crate::runtime()?.block_on(async {
        let pulled = rpull::pull_image(image, &opts.pull).await?;
        let mut ctd = Containerd::connect(&opts.pull.address, &opts.pull.namespace).await?;
        // Under a lease, as `ctr run` does: between the snapshot's Prepare and the container
        // that refers to it, containerd's garbage collector would otherwise remove the
        // snapshot (seen once: the task's overlay mount then failed on a missing workdir).
        ctd.start_lease("record-trace").await?;
        let id = format!("record-trace-{}", std::process::id());
        let run = Run {
            ctd: &ctd,
            id: &id,
            snapshotter: &opts.pull.snapshotter,
        };
        let ran = run.run(&pulled, &trace, opts).await;
        run.clean_up().await;
        ctd.end_lease().await;
        ran
    })?;
    collect(&trace)
}

/// overlaybd's protocol: remove the lock, the daemon writes the trace, `.ok` appears.
fn collect(trace: &std::path::Path) -> Result<Vec<u8>> {
    let with = |ext: &str| trace.with_extension(ext);
    if !with("lock").exists() && !with("ok").exists() {
        return Err(Error::Image(
            "the container did not start with recording on (no trace lock file appeared)".into(),
        ));
    }
    let _ = std::fs::remove_file(with("lock"));
    let t = Instant::now();
    while !with("ok").exists() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(Error::Image(format!(
                "the daemon did not write the trace {} within 60 s",
                trace.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bytes =
        std::fs::read(trace).map_err(|e| Error::io("read", trace.display().to_string(), e))?;
    if bytes.is_empty() {
        return Err(Error::Image(
            "the trace is empty: the container read nothing from the image".into(),
        ));
    }
    Ok(bytes)
}

/// One container run for a recording.
struct Run<'a> {
    ctd: &'a Containerd,
    id: &'a str,
    snapshotter: &'a str,
}

impl Run<'_> {
    async fn run(
        &self,
        pulled: &Pulled,
        trace: &std::path::Path,
        opts: &RecordOptions,
    ) -> Result<()> {
        let spec = runtime_spec(&pulled.config, &opts.command, self.id, &opts.pull.namespace)?;
        let mut l = HashMap::new();
        l.insert(labels::RECORD_TRACE.to_string(), "yes".to_string());
        l.insert(
            labels::RECORD_TRACE_PATH.to_string(),
            trace.display().to_string(),
        );
        let mut sn = snapshots::snapshots_client::SnapshotsClient::new(self.ctd.channel());
        let mounts = sn
            .prepare(self.ctd.req(snapshots::PrepareSnapshotRequest {
                snapshotter: self.snapshotter.to_string(),
                key: self.id.to_string(),
                parent: pulled.top_chain.clone(),
                labels: l,
            }))
            .await
            .map_err(status("prepare the container's snapshot"))?
            .into_inner()
            .mounts;
        let mut cc = containers::containers_client::ContainersClient::new(self.ctd.channel());
        cc.create(self.ctd.req(containers::CreateContainerRequest {
            container: Some(containers::Container {
                id: self.id.to_string(),
                image: pulled.name.clone(),
                runtime: Some(containers::container::Runtime {
                    name: RUNTIME.into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE.into(),
                    value: spec,
                }),
                snapshotter: self.snapshotter.to_string(),
                snapshot_key: self.id.to_string(),
                ..Default::default()
            }),
        }))
        .await
        .map_err(status("create the container"))?;
        let mut tc = tasks::tasks_client::TasksClient::new(self.ctd.channel());
        tc.create(self.ctd.req(tasks::CreateTaskRequest {
            container_id: self.id.to_string(),
            rootfs: mounts,
            ..Default::default()
        }))
        .await
        .map_err(status("create the task"))?;
        tc.start(self.ctd.req(tasks::StartRequest {
            container_id: self.id.to_string(),
            exec_id: String::new(),
        }))
        .await
        .map_err(status("start the task"))?;
        self.stop_after(opts.time).await
    }

    /// Waits for the task to exit within `time`, else SIGTERM and as long again (at least
    /// 5 s), else SIGKILL.
    async fn stop_after(&self, time: Duration) -> Result<()> {
        if self.wait(time).await {
            return Ok(());
        }
        self.kill(libc_signal::TERM).await;
        if self.wait(time.max(Duration::from_secs(5))).await {
            return Ok(());
        }
        self.kill(libc_signal::KILL).await;
        if self.wait(Duration::from_secs(30)).await {
            return Ok(());
        }
        Err(Error::Image(format!(
            "container {} did not stop after SIGKILL",
            self.id
        )))
    }

    /// Whether the task exited within `limit`.
    async fn wait(&self, limit: Duration) -> bool {
        let mut tc = tasks::tasks_client::TasksClient::new(self.ctd.channel());
        let req = self.ctd.req(tasks::WaitRequest {
            container_id: self.id.to_string(),
            exec_id: String::new(),
        });
        matches!(tokio::time::timeout(limit, tc.wait(req)).await, Ok(Ok(_)))
    }

    async fn kill(&self, signal: u32) {
        let mut tc = tasks::tasks_client::TasksClient::new(self.ctd.channel());
        let _ = tc
            .kill(self.ctd.req(tasks::KillRequest {
                container_id: self.id.to_string(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await;
    }

    /// Removes the task, the container and its snapshot (whichever exist).
    async fn clean_up(&self) {
        let mut tc = tasks::tasks_client::TasksClient::new(self.ctd.channel());
        if tc
            .delete(self.ctd.req(tasks::DeleteTaskRequest {
                container_id: self.id.to_string(),
            }))
            .await
            .is_err()
        {
            // Still running (the stop failed): kill it so it can be deleted.
            self.kill(libc_signal::KILL).await;
            let _ = self.wait(Duration::from_secs(10)).await;
            let _ = tc
                .delete(self.ctd.req(tasks::DeleteTaskRequest {
                    container_id: self.id.to_string(),
                }))
                .await;
        }
        let mut cc = containers::containers_client::ContainersClient::new(self.ctd.channel());
        let _ = cc
            .delete(self.ctd.req(containers::DeleteContainerRequest {
                id: self.id.to_string(),
            }))
            .await;
        let mut sn = snapshots::snapshots_client::SnapshotsClient::new(self.ctd.channel());
        let _ = sn
            .remove(self.ctd.req(snapshots::RemoveSnapshotRequest {
                snapshotter: self.snapshotter.to_string(),
                key: self.id.to_string(),
            }))
            .await;
    }
}

/// Signal numbers on Linux.
mod libc_signal {
    pub const KILL: u32 = 9;
    pub const TERM: u32 = 15;
}

/// The capabilities containerd gives a container by default (`oci.WithDefaultSpec`).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process user of an image config's `User`: numeric `uid[:gid]`, or `root`. Other names
/// would need the image's `/etc/passwd`, which this client does not mount.
fn user(spec: &str) -> Result<(u32, u32)> {
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    let num = |s: &str, default: u32| match s {
        "" | "root" => Ok(default),
        n => n.parse::<u32>().map_err(|_| {
            Error::Image(format!(
                "image user {spec:?}: only numeric users (uid[:gid]) or root can be run \
                 for a recording; give --command with a numeric user image or rebuild it"
            ))
        }),
    };
    let uid = num(u, 0)?;
    let gid = num(g, if u.is_empty() || u == "root" { 0 } else { uid })?;
    Ok((uid, gid))
}

/// containerd's default Linux runtime spec (`oci.WithDefaultSpec`) with the image config's
/// process (`oci.WithImageConfig`), as `ctr run` makes it; JSON.
pub fn runtime_spec(
    config: &[u8],
    command: &[String],
    id: &str,
    namespace: &str,
) -> Result<Vec<u8>> {
    let cfg: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| Error::Image(format!("image config: {e}")))?;
    let c = &cfg["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = if command.is_empty() {
        let mut a = strings(&c["Entrypoint"]);
        a.extend(strings(&c["Cmd"]));
        a
    } else {
        command.to_vec()
    };
    if args.is_empty() {
        return Err(Error::Image(
            "the image has no entrypoint or command: give one".into(),
        ));
    }
    let mut env = strings(&c["Env"]);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    let cwd = c["WorkingDir"]
        .as_str()
        .filter(|d| !d.is_empty())
        .unwrap_or("/");
    let (uid, gid) = user(c["User"].as_str().unwrap_or(""))?;
    let spec = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs"},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {
            "cgroupsPath": format!("/{namespace}/{id}"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    });
    Ok(serde_json::to_vec(&spec).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_runs_the_images_process() {
        let cfg = br#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
            "Env":["A=1"],"WorkingDir":"/srv","User":"1000:100"}}"#;
        let s: serde_json::Value =
            serde_json::from_slice(&runtime_spec(cfg, &[], "r1", "ns").unwrap()).unwrap();
        assert_eq!(
            s["process"]["args"],
            serde_json::json!(["/bin/sh", "-c", "echo hi"])
        );
        assert_eq!(s["process"]["env"][0].as_str().unwrap(), DEFAULT_PATH);
        assert_eq!(s["process"]["env"][1], "A=1");
        assert_eq!(s["process"]["cwd"], "/srv");
        assert_eq!(
            s["process"]["user"],
            serde_json::json!({"uid": 1000, "gid": 100})
        );
        assert_eq!(s["linux"]["cgroupsPath"], "/ns/r1");
        // A command given wins; a config without a user runs as root in `/`.
        let s: serde_json::Value = serde_json::from_slice(
            &runtime_spec(
                br#"{"config":{"Cmd":["x"]}}"#,
                &["/bin/true".into()],
                "r",
                "n",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(s["process"]["args"], serde_json::json!(["/bin/true"]));
        assert_eq!(
            s["process"]["user"],
            serde_json::json!({"uid": 0, "gid": 0})
        );
        assert_eq!(s["process"]["cwd"], "/");
        // Nothing to run, or a user name that needs the image's passwd: clear errors.
        assert!(runtime_spec(br#"{"config":{}}"#, &[], "r", "n").is_err());
        assert!(runtime_spec(
            br#"{"config":{"Cmd":["x"],"User":"www-data"}}"#,
            &[],
            "r",
            "n"
        )
        .is_err());
        assert_eq!(user("").unwrap(), (0, 0));
        assert_eq!(user("5").unwrap(), (5, 5));
        assert_eq!(user("root:7").unwrap(), (0, 7));
    }
}
