//! Reading key files (the cluster secret; later database passwords) the way ssh treats keys:
//! a file that group or others can read is refused, because the key may already be exposed.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Key material. Never printed; its bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Why a key file cannot be used, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFileProblem {
    pub problem: String,
    pub fix: String,
}

/// Files larger than this are not key files.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads a key file: opened once, not through a symbolic link, and checked on the open
/// descriptor (so it cannot be swapped between the check and the read) — a regular file owned
/// by the user vipgate runs as (or root), owner-only permissions, and at least `min_len` bytes
/// once surrounding whitespace (e.g. the newline `openssl rand -base64` writes) is trimmed.
pub fn read_key_file(path: &Path, min_len: usize) -> Result<Secret, KeyFileProblem> {
    let shown = path.display();
    let generate = format!("openssl rand -base64 48 > {shown} && chmod 600 {shown}");
    let unreadable = |e: std::io::Error| KeyFileProblem {
        problem: format!("cannot read {shown}: {e}"),
        fix: match e.raw_os_error() {
            _ if e.kind() == std::io::ErrorKind::NotFound => {
                format!("create it on every node with the same content, e.g. `{generate}`, then copy it")
            }
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                format!("{shown} is a symbolic link: point the setting at the key file itself")
            }
            _ => format!("make {shown} readable by the user vipgate runs as"),
        },
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    check_key_file(path, &meta, &generate)?;
    // Sized once (no reallocation leaves copies behind), and bounded whatever the file does.
    let mut raw = Vec::with_capacity(meta.len() as usize + 1);
    let read = (&mut file)
        .take(MAX_KEY_FILE)
        .read_to_end(&mut raw)
        .map_err(unreadable);
    let key = Secret(raw.trim_ascii().to_vec());
    zeroize::Zeroize::zeroize(&mut raw);
    read?;
    if key.0.len() < min_len {
        return Err(KeyFileProblem {
            problem: format!(
                "{shown} holds {} bytes of key; at least {min_len} are needed",
                key.0.len()
            ),
            fix: format!("generate a longer key, e.g. `{generate}`, and copy it to every node"),
        });
    }
    Ok(key)
}

/// The checks on an open key file: its type, owner, mode and size.
fn check_key_file(path: &Path, meta: &std::fs::Metadata, generate: &str) -> Result<(), KeyFileProblem> {
    let shown = path.display();
    if !meta.is_file() {
        return Err(KeyFileProblem {
            problem: format!("{shown} is not a regular file"),
            fix: format!("point it at a file holding the key, e.g. `{generate}`"),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(KeyFileProblem {
            problem: format!(
                "{shown} belongs to user id {}, neither vipgate's ({me}) nor root; whoever owns it can change the key",
                meta.uid()
            ),
            fix: format!("chown it to the user vipgate runs as (or root): chown vipgate {shown}"),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileProblem {
            problem: format!(
                "{shown} is readable by group or others (mode {mode:04o}); the key may be exposed"
            ),
            fix: format!("chmod 600 {shown} (and consider replacing the key on every node)"),
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyFileProblem {
            problem: format!("{shown} is {} bytes; a key file is short", meta.len()),
            fix: format!("point it at the key file, e.g. `{generate}`"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_private_long_key_is_read_without_its_trailing_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "k", b"0123456789abcdef0123456789abcdef\n", 0o600);
        assert_eq!(
            read_key_file(&p, 32).unwrap().bytes(),
            b"0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            format!("{:?}", read_key_file(&p, 32).unwrap()),
            "Secret(32 bytes)"
        );
    }

    #[test]
    fn keys_readable_by_others_short_or_missing_are_refused_with_a_fix() {
        let d = tempfile::tempdir().unwrap();
        let open = write(d.path(), "open", &[b'x'; 40], 0o644);
        let e = read_key_file(&open, 32).unwrap_err();
        assert!(
            e.problem.contains("mode 0644") && e.fix.contains("chmod 600"),
            "{e:?}"
        );
        let short = write(d.path(), "short", b"too short\n", 0o600);
        let e = read_key_file(&short, 32).unwrap_err();
        assert!(
            e.problem.contains("9 bytes") && e.fix.contains("openssl rand"),
            "{e:?}"
        );
        let e = read_key_file(&d.path().join("absent"), 32).unwrap_err();
        assert!(
            e.problem.contains("cannot read") && e.fix.contains("create it"),
            "{e:?}"
        );
        let e = read_key_file(d.path(), 32).unwrap_err();
        assert!(e.problem.contains("not a regular file"), "{e:?}");
    }

    #[test]
    fn a_key_behind_a_symbolic_link_or_owned_by_someone_else_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let key = write(d.path(), "k", b"0123456789abcdef0123456789abcdef\n", 0o600);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let e = read_key_file(&link, 32).unwrap_err();
        assert!(e.fix.contains("symbolic link"), "{e:?}");
        // A file of another user (here: nobody's), when this process may give it away.
        let nobody = nix::unistd::Uid::from_raw(65534);
        if nix::unistd::chown(&key, Some(nobody), None).is_ok() {
            let e = read_key_file(&key, 32).unwrap_err();
            assert!(e.problem.contains("user id 65534"), "{e:?}");
        } else {
            println!("not root: the foreign-owner check is exercised by the root test run");
        }
    }
}
