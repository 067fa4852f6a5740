//! The local server's authentication flags and `medlabel user`, kept out of the binary
//! so that its `serve` stays about serving.
//!
//! `medlabel serve` is open by default, as MONAI Label is. `--auth builtin` uses the
//! users of the studies folder (`medlabel user add/list/remove`); `--auth oidc --issuer
//! URL --audience AUD` trusts an identity provider. A confidential client's secret for
//! the password grant comes from `MEDLABEL_AUTH_CLIENT_SECRET`, never from argv.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use medlabel_auth::{Authenticator, Builtin, Oidc, OidcConfig, Role, users::UserStore};

type Error = Box<dyn std::error::Error>;

/// The authentication flags of `medlabel serve`.
pub fn serve_args() -> [Arg; 6] {
    [
            Arg::new("auth")
                .long("auth")
                .value_parser(["none", "builtin", "oidc"])
                .default_value("none")
                .help("Authentication: none (MONAI Label's default), builtin (users of the studies folder) or oidc"),
        Arg::new("issuer")
                .long("issuer")
                .help("--auth oidc: the issuer URL tokens carry in `iss` (a Keycloak realm URL)"),
        Arg::new("audience")
                .long("audience")
                .help("--auth oidc: the audience tokens must carry in `aud`"),
        Arg::new("client-id")
                .long("client-id")
                .help("--auth oidc: the client the password grant is made for (default: the audience; secret from MEDLABEL_AUTH_CLIENT_SECRET)"),
        Arg::new("roles-claim")
                .long("roles-claim")
                .default_value(medlabel_auth::oidc::DEFAULT_ROLES_CLAIM)
                .help("--auth oidc: dot-separated path of the roles array in tokens"),
        Arg::new("token-lifetime")
                .long("token-lifetime")
                .value_parser(value_parser!(u64))
                .default_value("28800")
                .help("--auth builtin: seconds a token issued by /auth/token lasts"),
    ]
}

/// The authenticator `medlabel serve`'s flags ask for; `home` is the studies folder's
/// `.medlabel` directory.
pub async fn from_serve_args(
    args: &ArgMatches,
    home: &Path,
) -> Result<Option<Authenticator>, Error> {
    let text = |name: &str| args.get_one::<String>(name).cloned();
    match text("auth").as_deref() {
        Some("builtin") => {
            let lifetime =
                Duration::from_secs(*args.get_one::<u64>("token-lifetime").expect("defaulted"));
            let home = home.to_owned();
            let builtin =
                tokio::task::spawn_blocking(move || Builtin::open(&home, lifetime)).await??;
            let users = builtin.users().users()?.len();
            if users == 0 {
                tracing::warn!(
                    "--auth builtin with no users: add one with `medlabel user add NAME --studies DIR --role monailabel-admin`"
                );
            }
            tracing::info!(users, "authentication: built-in users");
            Ok(Some(Authenticator::Builtin(Arc::new(builtin))))
        }
        Some("oidc") => {
            let (Some(issuer), Some(audience)) = (text("issuer"), text("audience")) else {
                return Err("--auth oidc needs --issuer and --audience".into());
            };
            let mut config = OidcConfig::new(issuer, audience);
            if let Some(client_id) = text("client-id") {
                config.client_id = client_id;
            }
            config.client_secret = std::env::var(crate::auth::ENV_CLIENT_SECRET).ok();
            config.roles_claim = text("roles-claim").expect("defaulted");
            let oidc = Oidc::new(config);
            // Keys are fetched on demand; fetching them now only reports a wrong issuer
            // at start rather than at the first request.
            if let Err(err) = oidc.prefetch().await {
                tracing::warn!(error = %err, "the issuer cannot be reached yet");
            }
            tracing::info!(issuer = %oidc.config().issuer, "authentication: OIDC");
            Ok(Some(Authenticator::Oidc(Arc::new(oidc))))
        }
        _ => Ok(None),
    }
}

/// `medlabel user add|list|remove`.
pub fn user_command() -> Command {
    let studies = || {
        Arg::new("studies")
            .long("studies")
            .required(true)
            .value_parser(value_parser!(PathBuf))
            .help("The studies folder whose users these are")
    };
    let roles = Role::ALL.map(Role::name);
    Command::new("user")
        .about("Manage the users of `medlabel serve --auth builtin` (kept in DIR/.medlabel/users.json)")
        .subcommand_required(true)
        .subcommand(
            Command::new("add")
                .about("Add a user, or give one a new password and roles; the password is read from standard input")
                .arg(Arg::new("name").required(true))
                .arg(studies())
                .arg(
                    Arg::new("role")
                        .long("role")
                        .required(true)
                        .action(ArgAction::Append)
                        .value_parser(roles)
                        .help("A MONAI Label role (repeat for more); each implies the ones below it"),
                ),
        )
        .subcommand(Command::new("list").about("List the users and their roles").arg(studies()))
        .subcommand(
            Command::new("remove")
                .about("Remove a user; their tokens stop working at once")
                .arg(Arg::new("name").required(true))
                .arg(studies()),
        )
}

/// Runs `medlabel user ...`.
pub fn run_user(args: &ArgMatches) -> Result<(), Error> {
    let (action, args) = args.subcommand().expect("clap requires a subcommand");
    let studies: &PathBuf = args.get_one("studies").expect("required");
    if !studies.is_dir() {
        return Err(format!("{} is not a directory", studies.display()).into());
    }
    let store = UserStore::new(&studies.join(".medlabel"));
    match action {
        "add" => {
            let name: &String = args.get_one("name").expect("required");
            let roles: Vec<Role> = args
                .get_many::<String>("role")
                .expect("required")
                .filter_map(|r| Role::parse(r))
                .collect();
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let added = store.add(name, password, &roles)?;
            println!(
                "{}",
                serde_json::json!({"user": name, "added": added, "updated": !added})
            );
        }
        "list" => {
            for user in store.users()?.iter() {
                println!(
                    "{}",
                    serde_json::json!({"user": user.name, "roles": user.roles})
                );
            }
        }
        "remove" => {
            let name: &String = args.get_one("name").expect("required");
            if !store.remove(name)? {
                return Err(format!("no user {name}").into());
            }
            println!("{}", serde_json::json!({"user": name, "removed": true}));
        }
        _ => unreachable!("clap knows the subcommands"),
    }
    Ok(())
}
