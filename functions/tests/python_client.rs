//! The real MONAI Label Python client (monailabel 0.8.5) against a spawned
//! `medlabel serve`: the compatibility the whole product promises.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;

fn start(studies: &Path, extra: &[&std::ffi::OsStr]) -> (common::LocalServer, String) {
    let server = common::LocalServer::start(studies, extra);
    let url = server.url.clone();
    (server, url)
}

fn run_script(script: &str, url: &str, work: &Path, extra: &[&str]) {
    common::run_python(script, url, work, extra);
}

#[test]
fn python_client_works_against_medlabel_serve() {
    let studies = tempfile::tempdir().unwrap();
    std::fs::write(
        studies.path().join("imported_1.nii.gz"),
        common::ct_volume(1),
    )
    .unwrap();
    let labels = studies.path().join("labels").join("final");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::write(
        labels.join("imported_1.nii.gz"),
        common::label_volume(1, 60),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();

    // The starter model without a runner process: its training jobs stay queued.
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    let (_server, url) = start(
        studies.path(),
        &[
            "--runner".as_ref(),
            "/nonexistent".as_ref(),
            "--starter-model".as_ref(),
            starter.as_os_str(),
        ],
    );
    let studies_arg = studies.path().to_str().unwrap();
    run_script("client_compat.py", &url, work.path(), &[studies_arg]);
    // The events live where the brief says: the studies folder's .medlabel directory.
    assert!(studies.path().join(".medlabel/events.db").is_file());
}

/// With the GPU runner (a child process on the same event log) and the starter model:
/// inference, training and train stats through the real client.
#[test]
fn python_client_infers_and_trains_with_the_runner() {
    let studies = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let runner = common::runner_binary();
    let starter = common::manifest_dir().join("../gpu-runner/models/segmentation_spleen");
    let (_server, url) = start(
        studies.path(),
        &[
            "--runner".as_ref(),
            runner.as_os_str(),
            "--starter-model".as_ref(),
            starter.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ],
    );
    run_script("client_models.py", &url, work.path(), &[]);
}

/// `medlabel user ARGS...` with `stdin` on its standard input; its standard output.
fn medlabel_user(args: &[&std::ffi::OsStr], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_medlabel"))
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("medlabel starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "medlabel user {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// `medlabel serve --auth builtin` with users made by `medlabel user add`: the real
/// client's login, then calls with the token, and a user without the role refused.
#[test]
fn python_client_logs_in_with_builtin_users() {
    let studies = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = studies.path().as_os_str();
    for (name, role) in [
        ("annotator", "monailabel-annotator"),
        ("reader", "monailabel-user"),
    ] {
        let added = medlabel_user(
            &[
                "add".as_ref(),
                name.as_ref(),
                "--studies".as_ref(),
                dir,
                "--role".as_ref(),
                role.as_ref(),
            ],
            &format!("pw-{name}\n"),
        );
        assert!(added.contains("\"added\":true"), "{added}");
    }
    let listed = medlabel_user(&["list".as_ref(), "--studies".as_ref(), dir], "");
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [
            r#"{"roles":["monailabel-annotator"],"user":"annotator"}"#,
            r#"{"roles":["monailabel-user"],"user":"reader"}"#,
        ]
    );
    let stored = std::fs::read_to_string(studies.path().join(".medlabel/users.json")).unwrap();
    assert!(!stored.contains("pw-annotator") && stored.contains("$argon2id$"));

    let (_server, url) = start(
        studies.path(),
        &[
            "--runner".as_ref(),
            "/nonexistent".as_ref(),
            "--auth".as_ref(),
            "builtin".as_ref(),
        ],
    );
    run_script(
        "client_auth.py",
        &url,
        work.path(),
        &["annotator", "pw-annotator", "reader", "pw-reader"],
    );
    medlabel_user(
        &[
            "remove".as_ref(),
            "reader".as_ref(),
            "--studies".as_ref(),
            dir,
        ],
        "",
    );
    let listed = medlabel_user(&["list".as_ref(), "--studies".as_ref(), dir], "");
    assert_eq!(listed.lines().count(), 1);
}

/// `medlabel serve --auth oidc` against a real issuer on loopback: the client's login
/// is relayed to the issuer's token endpoint.
#[test]
fn python_client_logs_in_through_an_oidc_issuer() {
    let issuer = common::oidc::Issuer::start(&[
        ("annotator", "pw-annotator", &["monailabel-annotator"]),
        ("reader", "pw-reader", &["monailabel-user"]),
    ]);
    let studies = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (_server, url) = start(
        studies.path(),
        &[
            "--runner".as_ref(),
            "/nonexistent".as_ref(),
            "--auth".as_ref(),
            "oidc".as_ref(),
            "--issuer".as_ref(),
            issuer.url.as_ref(),
            "--audience".as_ref(),
            common::oidc::AUDIENCE.as_ref(),
        ],
    );
    run_script(
        "client_auth.py",
        &url,
        work.path(),
        &["annotator", "pw-annotator", "reader", "pw-reader"],
    );
}
