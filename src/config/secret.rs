//! Reading key files (the cluster secret; later database passwords) the way ssh treats keys:
//! a file that group or others can read is refused, because the key may already be exposed.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Key material. Never printed.
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

/// Reads a key file: owner-only permissions, at least `min_len` bytes once surrounding
/// whitespace (e.g. the newline `openssl rand -base64` writes) is trimmed.
pub fn read_key_file(path: &Path, min_len: usize) -> Result<Secret, KeyFileProblem> {
    let shown = path.display();
    let generate = format!("openssl rand -base64 48 > {shown} && chmod 600 {shown}");
    let meta = std::fs::metadata(path).map_err(|e| KeyFileProblem {
        problem: format!("cannot read {shown}: {e}"),
        fix: if e.kind() == std::io::ErrorKind::NotFound {
            format!("create it on every node with the same content, e.g. `{generate}`, then copy it")
        } else {
            format!("make {shown} readable by the user vipgate runs as")
        },
    })?;
    if !meta.is_file() {
        return Err(KeyFileProblem {
            problem: format!("{shown} is not a regular file"),
            fix: format!("point it at a file holding the key, e.g. `{generate}`"),
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
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(|e| KeyFileProblem {
            problem: format!("cannot read {shown}: {e}"),
            fix: format!("make {shown} readable by the user vipgate runs as"),
        })?;
    let key = raw.trim_ascii();
    if key.len() < min_len {
        return Err(KeyFileProblem {
            problem: format!(
                "{shown} holds {} bytes of key; at least {min_len} are needed",
                key.len()
            ),
            fix: format!("generate a longer key, e.g. `{generate}`, and copy it to every node"),
        });
    }
    Ok(Secret(key.to_vec()))
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
}
