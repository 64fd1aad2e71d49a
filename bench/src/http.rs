//! The client side of every scenario, the same code against both servers:
//! bodies stream from files, downloads are counted and dropped.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Body, Client, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncReadExt as _;

/// A file as a streaming request body with its length.
async fn file_body(path: &Path) -> anyhow::Result<(Body, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata().await?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok((Body::wrap_stream(stream), len))
}

/// Resolves a `Location` header against the server it came from.
fn location(response: &Response, base: &str) -> anyhow::Result<String> {
    let value = response
        .headers()
        .get(LOCATION)
        .context("no Location header")?
        .to_str()?;
    Ok(if value.starts_with("http") {
        value.to_owned()
    } else {
        format!("{base}{value}")
    })
}

/// Ours: `PUT /blobs/sha256:<hex>` with the file as the body.
pub(crate) async fn put_file(c: &Client, base: &str, path: &Path, sha: &str) -> anyhow::Result<()> {
    let (body, len) = file_body(path).await?;
    put_blob(c, base, body, len, sha).await
}

/// Ours: one blob in one `PUT`.
pub(crate) async fn put_blob(
    c: &Client,
    base: &str,
    body: Body,
    len: u64,
    sha: &str,
) -> anyhow::Result<()> {
    let request = c
        .put(format!("{base}/blobs/sha256:{sha}"))
        .header(CONTENT_LENGTH, len)
        .body(body);
    send(
        request,
        &[StatusCode::CREATED, StatusCode::OK],
        "PUT /blobs",
    )
    .await?;
    Ok(())
}

/// Sends a request and checks the status of the answer.
pub(crate) async fn send(
    request: RequestBuilder,
    want: &[StatusCode],
    what: &str,
) -> anyhow::Result<Response> {
    let response = request.send().await?;
    let status = response.status();
    if want.contains(&status) {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    bail!(
        "{what}: {status}: {}",
        body.chars().take(300).collect::<String>()
    )
}

/// Runs `requests`, `jobs` at a time; how long they took.
pub(crate) async fn concurrently<F>(
    jobs: usize,
    requests: impl IntoIterator<Item = F>,
) -> anyhow::Result<Duration>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let t = Instant::now();
    futures::stream::iter(requests)
        .buffer_unordered(jobs)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(t.elapsed())
}

/// Ours: an upload session, `chunk` bytes per `PATCH`, then `PUT ?digest=`.
pub(crate) async fn session_upload(
    c: &Client,
    base: &str,
    path: &Path,
    sha: &str,
    chunk: usize,
) -> anyhow::Result<()> {
    let post = c.post(format!("{base}/uploads"));
    let r = send(post, &[StatusCode::ACCEPTED], "POST /uploads").await?;
    let url = location(&r, base)?;
    let mut file = tokio::fs::File::open(path).await?;
    let mut offset = 0u64;
    loop {
        let mut buf = Vec::with_capacity(chunk);
        (&mut file).take(chunk as u64).read_to_end(&mut buf).await?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len() as u64;
        let patch = c.patch(&url).header("Upload-Offset", offset).body(buf);
        let ok = [StatusCode::NO_CONTENT, StatusCode::ACCEPTED, StatusCode::OK];
        send(patch, &ok, "PATCH").await?;
        offset += n;
    }
    let finish = c.put(format!("{url}?digest=sha256:{sha}"));
    send(finish, &[StatusCode::CREATED], "finishing the upload").await?;
    Ok(())
}

/// The registry: a monolithic upload, `POST` for a session then `PUT
/// ?digest=` with the whole body.
pub(crate) async fn registry_put(
    c: &Client,
    base: &str,
    repo: &str,
    body: Body,
    len: u64,
    sha: &str,
) -> anyhow::Result<()> {
    let post = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .header(CONTENT_LENGTH, 0);
    let r = send(post, &[StatusCode::ACCEPTED], "registry POST uploads").await?;
    let url = location(&r, base)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let put = c
        .put(format!("{url}{sep}digest=sha256:{sha}"))
        .header(CONTENT_LENGTH, len)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(body);
    send(put, &[StatusCode::CREATED], "registry PUT ?digest=").await?;
    Ok(())
}

pub(crate) async fn registry_put_file(
    c: &Client,
    base: &str,
    repo: &str,
    path: &Path,
    sha: &str,
) -> anyhow::Result<()> {
    let (body, len) = file_body(path).await?;
    registry_put(c, base, repo, body, len, sha).await
}

/// GETs `url` (a byte range of it, if given), drops the bytes and checks
/// their count.
pub(crate) async fn get_count(
    c: &Client,
    url: &str,
    range: Option<(u64, u64)>,
    want: u64,
) -> anyhow::Result<()> {
    let mut request = c.get(url);
    if let Some((start, len)) = range {
        request = request.header(RANGE, format!("bytes={start}-{}", start + len - 1));
    }
    let ok = [StatusCode::OK, StatusCode::PARTIAL_CONTENT];
    let r = send(request, &ok, "GET").await?;
    let got = r
        .bytes_stream()
        .try_fold(0u64, |n, chunk| async move { Ok(n + chunk.len() as u64) })
        .await?;
    ensure!(got == want, "GET {url}: {got} bytes, expected {want}");
    Ok(())
}

/// A server's `/metrics`, read once.
pub(crate) struct Metrics(String);

impl Metrics {
    pub(crate) async fn read(c: &Client, base: &str) -> anyhow::Result<Metrics> {
        let text = c
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics(text))
    }

    /// The value of one series (its name and labels, as printed).
    pub(crate) fn value(&self, series: &str) -> anyhow::Result<f64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("no {series} in /metrics"))?
            .parse()
            .with_context(|| format!("{series} in /metrics"))
    }
}

/// `seconds` over `per` things, in milliseconds.
pub(crate) fn ms(seconds: f64, per: f64) -> String {
    format!("{:.2} ms", seconds * 1e3 / per)
}
