//! Each sandbox's disk: a sparse ext4 image of the template's `disk_mb`, loop-mounted on the
//! host and bound into the container as `/workspace` and `/tmp` (with `/var/tmp`), so one quota
//! bounds everything the sandbox can write (its root file system is read-only). A write past it
//! fails inside the sandbox with "No space left on device"; the host's disk is untouched.
//!
//! Why this and not `--storage-opt size`: Docker's storage drivers bound a container's writable
//! layer only on some backing file systems (overlay2 on xfs with project quotas, btrfs, zfs);
//! this machine's engine runs fuse-overlayfs, where no driver offers it. A loop-mounted image
//! works on any host where the daemon runs as root, costs 20-40 ms at create, and frees its
//! space the moment it is deleted.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// The executor image's user (ops/images/build.sh): the owner of the volume's folders.
const SANDBOX_UID: u32 = 1000;
const IMAGE_SUFFIX: &str = ".img";

/// A volume operation that failed: what was done, and why.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {command} failed: {stderr}")]
    Command {
        action: String,
        command: &'static str,
        stderr: String,
    },
    #[error("volume key {0:?} is not a plain file name")]
    Key(String),
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    move |source| VolumeError::Io {
        action: action.into(),
        source,
    }
}

/// Where a mounted volume's folders are, to bind into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePaths {
    pub workspace: PathBuf,
    pub tmp: PathBuf,
}

/// The volumes of this node's sandboxes, in a folder of the daemon's state directory named
/// after the node, so two daemons on one host never sweep each other's.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

impl Volumes {
    pub fn new(state_dir: &Path, node_id: &str) -> Self {
        Self {
            root: state_dir.join("volumes").join(node_id),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the folder, and checks that the tools are there, so a host that cannot make
    /// volumes says so at start rather than at the first session.
    pub async fn prepare(&self) -> Result<(), VolumeError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io_error(format!("creating {}", self.root.display())))?;
        run("checking for mkfs.ext4", "mkfs.ext4", &["-V"]).await?;
        Ok(())
    }

    fn image(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}{IMAGE_SUFFIX}"))
    }

    fn mount_point(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn paths(&self, key: &str) -> VolumePaths {
        let mount_point = self.mount_point(key);
        VolumePaths {
            workspace: mount_point.join("workspace"),
            tmp: mount_point.join("tmp"),
        }
    }

    /// Makes and mounts the volume `key` of `size_mb`; one already mounted (a repeated create
    /// of a container that exists) is kept as it is.
    pub async fn create(&self, key: &str, size_mb: u64) -> Result<VolumePaths, VolumeError> {
        check_key(key)?;
        if is_mounted(&self.mount_point(key)).await {
            return Ok(self.paths(key));
        }
        match self.make(key, size_mb).await {
            Ok(paths) => Ok(paths),
            Err(error) => {
                // Nothing half-made is left behind.
                if let Err(cleanup) = self.release(key).await {
                    tracing::warn!(error = %cleanup, key, "removing a half-made volume");
                }
                Err(error)
            }
        }
    }

    async fn make(&self, key: &str, size_mb: u64) -> Result<VolumePaths, VolumeError> {
        let mount_point = self.mount_point(key);
        let image = self.image(key);
        let action = format!("making the {size_mb} MiB volume of {key}");
        let file = tokio::fs::File::create(&image)
            .await
            .map_err(io_error(action.clone()))?;
        // Sparse: the host's disk is taken only as the sandbox writes.
        file.set_len(size_mb.saturating_mul(1024 * 1024))
            .await
            .map_err(io_error(action.clone()))?;
        drop(file);
        let image_arg = image.to_string_lossy();
        // No journal (a sandbox's scratch space need not survive a host crash) and no reserved
        // blocks; inode tables are never zeroed (the file is sparse, so they read as zeros).
        run(
            &action,
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-E",
                &format!("root_owner={SANDBOX_UID}:{SANDBOX_UID},lazy_itable_init=1,nodiscard"),
                &image_arg,
            ],
        )
        .await?;
        tokio::fs::create_dir_all(&mount_point)
            .await
            .map_err(io_error(action.clone()))?;
        run(
            &action,
            "mount",
            &[
                "-o",
                "loop,nosuid,nodev,noinit_itable",
                &image_arg,
                &mount_point.to_string_lossy(),
            ],
        )
        .await?;
        let paths = self.paths(key);
        for (folder, mode) in [(&paths.workspace, 0o755), (&paths.tmp, 0o1777)] {
            tokio::fs::create_dir_all(folder)
                .await
                .map_err(io_error(action.clone()))?;
            std::os::unix::fs::chown(folder, Some(SANDBOX_UID), Some(SANDBOX_UID))
                .map_err(io_error(action.clone()))?;
            tokio::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(io_error(action.clone()))?;
        }
        Ok(paths)
    }

    /// Unmounts and deletes the volume `key`; one that is not there is fine.
    pub async fn release(&self, key: &str) -> Result<(), VolumeError> {
        check_key(key)?;
        let mount_point = self.mount_point(key);
        let action = format!("releasing the volume of {key}");
        if is_mounted(&mount_point).await {
            // Lazily if still busy (a container being torn down): it goes when the last user
            // does, and the image's space with it.
            if run(&action, "umount", &[&mount_point.to_string_lossy()])
                .await
                .is_err()
            {
                run(&action, "umount", &["-l", &mount_point.to_string_lossy()]).await?;
            }
        }
        remove_if_present(tokio::fs::remove_dir(&mount_point).await).map_err(io_error(&action))?;
        remove_if_present(tokio::fs::remove_file(self.image(key)).await)
            .map_err(io_error(action))?;
        Ok(())
    }

    /// Releases every volume whose key is not in `live` (after a restart, or a missed event);
    /// returns how many.
    pub async fn retain(&self, live: &HashSet<String>) -> Result<usize, VolumeError> {
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io_error("listing the volumes")(error)),
        };
        let mut stale = HashSet::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_error("listing the volumes"))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(IMAGE_SUFFIX).unwrap_or(&name).to_owned();
            if !live.contains(&key) && check_key(&key).is_ok() {
                stale.insert(key);
            }
        }
        for key in &stale {
            self.release(key).await?;
        }
        Ok(stale.len())
    }
}

/// Keys become file names: only the container-name alphabet, no path.
fn check_key(key: &str) -> Result<(), VolumeError> {
    let plain = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        Ok(())
    } else {
        Err(VolumeError::Key(key.to_owned()))
    }
}

fn remove_if_present(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whether something is mounted at `path` (by the kernel's mount table).
async fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = tokio::fs::read_to_string("/proc/self/mountinfo").await else {
        return false;
    };
    let wanted = path.to_string_lossy();
    // The fifth field is the mount point (spaces would be escaped; keys have none).
    mounts
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

async fn run(action: &str, command: &'static str, args: &[&str]) -> Result<(), VolumeError> {
    let output = Command::new(command)
        .args(args)
        .output()
        .await
        .map_err(io_error(format!("{action}: running {command}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(VolumeError::Command {
            action: action.to_owned(),
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_names() {
        assert!(check_key("sandbox-abc_1").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    /// A real volume: made, full at its size, released with its space.
    #[tokio::test]
    async fn a_volume_bounds_writes_and_is_released() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: loop mounts need root");
            return;
        }
        let state = tempfile::tempdir().expect("temp dir");
        let volumes = Volumes::new(state.path(), "n1");
        volumes.prepare().await.expect("prepare");
        let paths = volumes.create("sandbox-vt", 32).await.expect("create");
        assert!(is_mounted(&volumes.mount_point("sandbox-vt")).await);
        assert_eq!(
            volumes.create("sandbox-vt", 32).await.expect("again"),
            paths,
            "a mounted volume is kept"
        );
        let big = vec![0u8; 40 * 1024 * 1024];
        let error = std::fs::write(paths.workspace.join("big"), &big).expect_err("over quota");
        assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
        volumes.release("sandbox-vt").await.expect("release");
        assert!(!volumes.image("sandbox-vt").exists());
        assert!(!volumes.mount_point("sandbox-vt").exists());
        volumes.create("sandbox-left", 16).await.expect("create");
        assert_eq!(
            volumes.retain(&HashSet::new()).await.expect("sweep"),
            1,
            "a volume with no container is swept"
        );
    }
}
