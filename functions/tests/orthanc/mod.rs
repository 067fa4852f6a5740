//! A real Orthanc with its DICOMweb plugin (Debian's `orthanc` and `orthanc-dicomweb`,
//! which `scripts/setup.sh` installs) on a free loopback port, with a generated
//! configuration: storage in a temp dir, no DICOM port, HTTP basic auth on.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const USER: &str = "medlabel";
/// A password no test output may ever show.
pub const PASSWORD: &str = "orthanc-s3cret-never-shown";

/// The Orthanc binary and DICOMweb plugin (`MEDLABEL_ORTHANC` and
/// `MEDLABEL_ORTHANC_DICOMWEB` override Debian's paths).
fn installed() -> (PathBuf, PathBuf) {
    let binary = std::env::var_os("MEDLABEL_ORTHANC")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/sbin/Orthanc".into());
    let plugin = std::env::var_os("MEDLABEL_ORTHANC_DICOMWEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/share/orthanc/plugins/libOrthancDicomWeb.so".into());
    assert!(
        binary.is_file() && plugin.is_file(),
        "Orthanc ({}) or its DICOMweb plugin ({}) is missing: run scripts/setup.sh, which \
         installs Debian's orthanc and orthanc-dicomweb",
        binary.display(),
        plugin.display()
    );
    (binary, plugin)
}

pub struct Orthanc {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`: Orthanc's REST API.
    pub url: String,
    http: reqwest::Client,
}

impl Orthanc {
    /// Starts Orthanc and waits until it answers.
    pub async fn start() -> Self {
        let (binary, plugin) = installed();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.path().join("storage");
        let config = json!({
            "Name": "medlabel-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": true,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": false,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/"},
        });
        let config_path = dir.path().join("orthanc.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("orthanc.log")).unwrap();
        let child = std::process::Command::new(binary)
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("Orthanc starts");
        let orthanc = Self {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = orthanc
                .http
                .get(format!("{}/system", orthanc.url))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return orthanc;
            }
            assert!(Instant::now() < deadline, "Orthanc did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its DICOMweb root.
    pub fn dicomweb(&self) -> String {
        format!("{}/dicom-web", self.url)
    }

    /// Stores one Part 10 file through Orthanc's REST API.
    pub async fn store(&self, file: &[u8]) {
        let reply = self
            .http
            .post(format!("{}/instances", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .body(file.to_vec())
            .send()
            .await
            .unwrap();
        let status = reply.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            reply.text().await.unwrap()
        );
    }

    pub async fn store_all(&self, files: &[Vec<u8>]) {
        for file in files {
            self.store(file).await;
        }
    }

    /// A QIDO-RS series search, straight to Orthanc.
    pub async fn series(&self, query: &str) -> Vec<Value> {
        self.http
            .get(format!("{}/series?{query}", self.dicomweb()))
            .basic_auth(USER, Some(PASSWORD))
            .header("accept", "application/dicom+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default()
    }

    /// Orthanc's id of the series with this SeriesInstanceUID.
    async fn series_id(&self, uid: &str) -> String {
        let found: Value = self
            .http
            .post(format!("{}/tools/lookup", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .body(uid.to_owned())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        found[0]["ID"]
            .as_str()
            .expect("the series is in Orthanc")
            .to_owned()
    }

    /// The Part 10 files of a series, through Orthanc's own REST API.
    pub async fn series_files(&self, uid: &str) -> Vec<Vec<u8>> {
        let id = self.series_id(uid).await;
        let instances: Value = self
            .http
            .get(format!("{}/series/{id}/instances", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut files = Vec::new();
        for instance in instances.as_array().unwrap() {
            let file = self
                .http
                .get(format!(
                    "{}/instances/{}/file",
                    self.url,
                    instance["ID"].as_str().unwrap()
                ))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            files.push(file.to_vec());
        }
        files
    }

    /// Deletes a series by its SeriesInstanceUID.
    pub async fn delete_series(&self, uid: &str) {
        let id = self.series_id(uid).await;
        let reply = self
            .http
            .delete(format!("{}/series/{id}", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
