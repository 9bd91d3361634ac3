//! A small W3C WebDriver client for the console's browser test: starts Debian's `chromedriver`,
//! opens one headless Chromium session, and offers the handful of commands the test needs
//! (navigate, find, type, click, read text, screenshot). Plain HTTP/1.1 and JSON, so the test
//! needs no browser-automation crate.
//!
//! Chromium and ChromeDriver are required: a missing one fails the test loudly (CI installs
//! Debian's `chromium` and `chromium-driver`).

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::http;

/// The `chromedriver` executable: `CHROMEDRIVER`, else `chromedriver` on the `PATH`, else
/// Debian's path.
fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/bin/chromedriver").exists() {
            "/usr/bin/chromedriver".to_owned()
        } else {
            "chromedriver".to_owned()
        }
    })
}

/// The browser binary: `CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// A running chromedriver with one browser session; both end on drop.
pub struct Browser {
    driver: tokio::process::Child,
    addr: SocketAddr,
    session: String,
}

/// The WebDriver id of a found element.
#[derive(Debug, Clone)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub async fn start() -> Self {
        let port = order_saga_testkit::pg::free_port().expect("a port");
        let driver = tokio::process::Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): the console test needs Debian's chromium and \
                     chromium-driver (apt-get install chromium chromium-driver)",
                    chromedriver()
                )
            });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
        };
        let created = browser
            .command(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium(),
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1400,1000"]
                    }
                }}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; the answer's `value`. Panics on a WebDriver error.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let body = body.to_string();
        let answer = http(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            (method == "POST").then_some(body.as_str()),
        )
        .await;
        let value: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| {
            panic!(
                "webdriver answered {} ({e}): {}",
                answer.status, answer.body
            )
        });
        assert_eq!(answer.status, 200, "webdriver {method} {path}: {value}");
        value["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.command("POST", &self.session_path("/url"), json!({ "url": url }))
            .await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.command("GET", &self.session_path("/url"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching the CSS `selector`, waiting up to 10 s for it.
    pub async fn find(&self, selector: &str) -> Element {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = http(
                self.addr,
                "POST",
                &self.session_path("/element"),
                &[("Content-Type", "application/json")],
                Some(&json!({"using": "css selector", "value": selector}).to_string()),
            )
            .await;
            if answer.status == 200 {
                let value: Value = serde_json::from_str(&answer.body).expect("json");
                let id = value["value"][ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("not an element: {value}"));
                return Element(id.to_owned());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no element {selector:?} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) {
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/value", element.0)),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clicks `element`.
    pub async fn click(&self, element: &Element) {
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/click", element.0)),
            json!({}),
        )
        .await;
    }

    /// The rendered text of the element matching `selector` (found again if the page changed
    /// under it).
    pub async fn text(&self, selector: &str) -> String {
        self.wait_text(selector, "").await
    }

    /// The text of the element matching `selector` once it contains `needle`, waiting up to
    /// 10 s (a click that submits a form returns before the next page has loaded).
    pub async fn wait_text(&self, selector: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let element = self.find(selector).await;
            let path = self.session_path(&format!("/element/{}/text", element.0));
            let answer = http(self.addr, "GET", &path, &[], None).await;
            let value: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            let text = value["value"].as_str().unwrap_or_default().to_owned();
            // A stale element (404) means the page was replaced: look again.
            if answer.status == 200 && text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector:?} never contained {needle:?}; last: {text:?} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Accepts the open `confirm()` dialog.
    pub async fn accept_alert(&self) {
        self.command("POST", &self.session_path("/alert/accept"), json!({}))
            .await;
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .command("GET", &self.session_path("/screenshot"), Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, bytes).expect("write screenshot");
    }

    /// Ends the session and chromedriver.
    pub async fn quit(mut self) {
        let path = self.session_path("");
        let _ = http(self.addr, "DELETE", &path, &[], None).await;
        let _ = self.driver.kill().await;
    }
}
