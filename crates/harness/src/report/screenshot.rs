//! Rendering the page to a PNG with headless Chromium.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Finds the first of `names` that is an executable file on `PATH`.
pub(super) fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

#[cfg(unix)]
pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
pub(super) fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Renders the HTML page `html` to the PNG `png` with headless Chromium (`chromium`,
/// `chromium-browser` or `google-chrome`, whichever is first found on `PATH`).
pub fn screenshot(html: &Path, png: &Path) -> anyhow::Result<()> {
    const BROWSERS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
    let Some(browser) = find_on_path(&BROWSERS) else {
        bail!(
            "no headless browser found: none of {} is on PATH (on Debian: apt-get install chromium)",
            BROWSERS.join(", ")
        );
    };
    let html_abs =
        std::fs::canonicalize(html).with_context(|| format!("resolving {}", html.display()))?;
    let png_abs = if png.is_absolute() {
        png.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(png)
    };
    if let Some(parent) = png_abs.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A stale file would make the existence check below meaningless.
    if png_abs.exists() {
        std::fs::remove_file(&png_abs)
            .with_context(|| format!("removing old {}", png_abs.display()))?;
    }
    let output = std::process::Command::new(&browser)
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--hide-scrollbars")
        .arg("--window-size=1200,3000")
        .arg(format!("--screenshot={}", png_abs.display()))
        .arg(format!("file://{}", html_abs.display()))
        .output()
        .with_context(|| format!("running {}", browser.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            browser.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if !png_abs.is_file() {
        bail!(
            "{} exited successfully but wrote no screenshot to {}: {}",
            browser.display(),
            png_abs.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
