//! Built-in users: names, roles and Argon2id password hashes in one file kept with the
//! studies folder (`<studies>/.medlabel/users.json`, readable by its owner only).
//!
//! `medlabel user add/list/remove` write the file (to a temporary file, then renamed
//! over it, so a reader never sees half of it); the server reads it again whenever its
//! modification time, size or inode changes, so a user added or removed while it runs
//! counts at the next request. Passwords are never stored: Argon2id with the parameters
//! RFC 9106 and OWASP recommend (the `argon2` crate's defaults: 19 MiB, 2 passes, one
//! lane), in PHC string form, so a future change of parameters still verifies old hashes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::role::Role;

/// The file's name inside `<studies>/.medlabel/`.
pub const USERS_FILE: &str = "users.json";

/// One built-in user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// The token subject: random, so that a user removed and added again under the same
    /// name does not inherit the old account's sessions and annotator tags.
    pub subject: String,
    pub roles: Vec<Role>,
    /// Argon2id PHC string.
    pub password: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<User>,
}

/// Identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// Why a user name is refused: it becomes a token claim, an event's user and, with
/// `annotator_tag`, a label tag, so it must be safe as one path segment.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} must be 1-64 characters of letters, digits, '.', '_', '-', '@', \
             not starting with '.'"
        ))
    }
}

/// Hashes `password` with Argon2id at the recommended cost.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    // A 128-bit random salt, as RFC 9106 recommends.
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|err| AuthError::Internal(format!("encoding a salt: {err}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| AuthError::Internal(format!("hashing a password: {err}")))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The users file of one studies folder.
#[derive(Debug)]
pub struct UserStore {
    path: PathBuf,
    cache: Mutex<Option<(Stamp, Arc<Vec<User>>)>>,
}

impl UserStore {
    /// The store of `<studies>/.medlabel/users.json`; the file need not exist yet.
    pub fn new(home: &Path) -> Self {
        Self {
            path: home.join(USERS_FILE),
            cache: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every user, re-read if the file changed since the last call.
    pub fn users(&self) -> Result<Arc<Vec<User>>, AuthError> {
        let current = stamp(&self.path);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(now), Some((seen, users))) = (&current, cache.as_ref())
            && now == seen
        {
            return Ok(users.clone());
        }
        let users = Arc::new(self.read()?.users);
        *cache = current.map(|s| (s, users.clone()));
        Ok(users)
    }

    /// The user called `name`, if any.
    pub fn find(&self, name: &str) -> Result<Option<User>, AuthError> {
        Ok(self.users()?.iter().find(|u| u.name == name).cloned())
    }

    /// The user whose token subject is `subject`, if any.
    pub fn by_subject(&self, subject: &str) -> Result<Option<User>, AuthError> {
        Ok(self.users()?.iter().find(|u| u.subject == subject).cloned())
    }

    /// Adds `name`, or gives an existing `name` a new password and roles (keeping its
    /// subject, so its sessions and annotator tags stay its own). `true` if added.
    pub fn add(&self, name: &str, password: &str, roles: &[Role]) -> Result<bool, AuthError> {
        check_name(name).map_err(AuthError::Internal)?;
        if password.is_empty() {
            return Err(AuthError::Internal("the password must not be empty".into()));
        }
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let hash = hash_password(password)?;
        let mut file = self.read()?;
        let added = match file.users.iter_mut().find(|u| u.name == name) {
            Some(user) => {
                user.password = hash;
                user.roles = roles;
                false
            }
            None => {
                file.users.push(User {
                    name: name.to_owned(),
                    subject: uuid::Uuid::new_v4().to_string(),
                    roles,
                    password: hash,
                });
                true
            }
        };
        self.write(&file)?;
        Ok(added)
    }

    /// Removes `name`; `false` if there was no such user. Its tokens stop working at once.
    pub fn remove(&self, name: &str) -> Result<bool, AuthError> {
        let mut file = self.read()?;
        let before = file.users.len();
        file.users.retain(|u| u.name != name);
        if file.users.len() == before {
            return Ok(false);
        }
        self.write(&file)?;
        Ok(true)
    }

    fn read(&self) -> Result<UsersFile, AuthError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                AuthError::Internal(format!("{} is unreadable: {err}", self.path.display()))
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(err) => Err(AuthError::Internal(format!(
                "reading {}: {err}",
                self.path.display()
            ))),
        }
    }

    fn write(&self, file: &UsersFile) -> Result<(), AuthError> {
        let io = |err: std::io::Error| {
            AuthError::Internal(format!("writing {}: {err}", self.path.display()))
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let json = serde_json::to_vec_pretty(file).expect("users serialise");
        write_private(dir, &self.path, &json).map_err(io)
    }
}

/// Writes `bytes` to `path` through a temporary file in `dir` renamed over it, readable
/// and writable by the owner only (the file holds password hashes or a signing key).
pub(crate) fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let temp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_updated_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path());
        assert!(store.users().unwrap().is_empty());
        assert!(store.add("alice", "s3cret", &[Role::Annotator]).unwrap());
        let alice = store.find("alice").unwrap().unwrap();
        assert!(
            alice
                .password
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(!alice.password.contains("s3cret"));
        assert!(verify_password("s3cret", &alice.password));
        assert!(!verify_password("s3cret!", &alice.password));

        // A second store (another process) sees the change; an update keeps the subject.
        let other = UserStore::new(dir.path());
        assert!(
            !other
                .add("alice", "n3w", &[Role::Admin, Role::Admin])
                .unwrap()
        );
        let updated = store.find("alice").unwrap().unwrap();
        assert_eq!(updated.subject, alice.subject);
        assert_eq!(updated.roles, vec![Role::Admin]);
        assert!(verify_password("n3w", &updated.password));

        assert!(other.remove("alice").unwrap());
        assert!(!other.remove("alice").unwrap());
        assert!(store.find("alice").unwrap().is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn unsafe_names_and_empty_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path());
        for name in ["", "../x", "a/b", ".hidden", "with space", &"x".repeat(65)] {
            assert!(store.add(name, "pw", &[Role::User]).is_err(), "{name:?}");
        }
        assert!(store.add("bob", "", &[Role::User]).is_err());
        assert!(!store.path().exists());
    }
}
