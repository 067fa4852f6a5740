//! A real OIDC issuer for the auth tests: `tests/oidc/issuer.mjs` (oauth2-mock-server,
//! installed by `scripts/setup.sh`) as a child process on loopback.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// The audience the test issuer puts in its tokens and medlabel is configured with.
pub const AUDIENCE: &str = "medlabel";

pub struct Issuer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub url: String,
}

impl Issuer {
    /// Starts an issuer whose password grant knows `users` (`name → (password, roles)`).
    pub fn start(users: &[(&str, &str, &[&str])]) -> Self {
        let users: serde_json::Map<String, Value> = users
            .iter()
            .map(|(name, password, roles)| {
                (
                    (*name).to_owned(),
                    json!({"password": password, "roles": roles}),
                )
            })
            .collect();
        let config = json!({"audience": AUDIENCE, "users": users});
        let script = super::manifest_dir().join("tests/oidc/issuer.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .arg(config.to_string())
            .env("OIDC_MODULES", super::cache_dir().join("oidc"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (scripts/setup.sh installs the issuer)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let started: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the issuer did not start: {line:?}"));
        let url = started["issuer"].as_str().unwrap().to_owned();
        Self {
            child,
            stdin,
            stdout,
            url,
        }
    }

    fn command(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert!(reply.get("error").is_none(), "{reply}");
        reply
    }

    /// A token the issuer signs for `user`; `extra` sets `expires_in`, `aud`, `iss`,
    /// `no_kid` or `kid` (see issuer.mjs).
    pub fn token(&mut self, user: &str, extra: Value) -> String {
        let mut command = json!({"cmd": "token", "user": user});
        command
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        self.command(command)["token"].as_str().unwrap().to_owned()
    }

    /// A new signing key; tokens made from now on use it. Returns its `kid`.
    pub fn rotate(&mut self) -> String {
        self.command(json!({"cmd": "rotate"}))["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// medlabel's settings for this issuer.
    pub fn config(&self) -> medlabel_auth::OidcConfig {
        medlabel_auth::OidcConfig::new(&self.url, AUDIENCE)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
