//! Object references and the stores behind them.
//!
//! A URI names content: a local path (or `file://` URI), an `s3://bucket/key`, or an
//! `http(s)://` URL. This crate lists them ([`list_files`]), reads them whole or by byte
//! range ([`fetch_many`], [`fetch`]), and hands the same configured stores to DataFusion
//! ([`store_for`]) so `read_parquet("s3://…")` and `image_decode` share connections.
//!
//! Remote reads run on one small I/O runtime owned by this crate, at most
//! [`max_concurrency`] requests in flight for the whole process, with bounded retries and
//! backoff (object_store's client); one store (and its connection pool) is kept per bucket
//! or origin, so connections are reused across batches and operators.
//!
//! S3 settings come from the `AWS_*` environment variables (`AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, …) and from
//! [`configure`], which overrides them for one bucket or origin.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("a.txt"), "hello world").unwrap();
//! let files = rillet_io::list_files(&format!("{}/*.txt", dir.path().display())).unwrap();
//! assert_eq!(files[0].size, 11);
//! let hello = rillet_io::fetch(&rillet_io::Request::range(&files[0].uri, 0, 5)).unwrap();
//! assert_eq!(&hello[..], b"hello");
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, GetOptions, GetRange, ObjectStore, RetryConfig,
};
use parking_lot::Mutex;
use rillet_common::{Result, RilletError};
use url::Url;

pub use object_store;

/// Why content could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The row's data is the problem (no such object, a range past its end, an object
    /// that changed since it was listed): the row gets a null with this reason.
    Data(String),
    /// The store is the problem (unreachable after retries, access denied, bad
    /// configuration): the job fails with this message, which names the URI.
    Infrastructure(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Data(m) | Self::Infrastructure(m) => f.write_str(m),
        }
    }
}

/// One read: a URI, an optional byte range and an optional expected version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Path or URL.
    pub uri: String,
    /// First byte to read.
    pub offset: Option<u64>,
    /// Bytes to read from `offset`.
    pub length: Option<u64>,
    /// A range must be complete (`true`), or is an upper bound (`false`, for sniffing).
    pub exact: bool,
    /// For remote objects: the entity tag seen when the object was listed. A read of an
    /// object that has changed since is a data error rather than silently other content.
    pub if_match: Option<String>,
}

impl Request {
    /// The whole object.
    pub fn whole(uri: &str) -> Self {
        Self {
            uri: uri.to_string(),
            offset: None,
            length: None,
            exact: true,
            if_match: None,
        }
    }

    /// Exactly `length` bytes from `offset`.
    pub fn range(uri: &str, offset: u64, length: u64) -> Self {
        Self {
            uri: uri.to_string(),
            offset: Some(offset),
            length: Some(length),
            exact: true,
            if_match: None,
        }
    }

    /// At most the first `n` bytes (fewer when the object is shorter).
    pub fn head(uri: &str, n: u64) -> Self {
        Self {
            uri: uri.to_string(),
            offset: None,
            length: Some(n),
            exact: false,
            if_match: None,
        }
    }
}

/// A listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path (local) or URL (remote), as operators will read it.
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, microseconds since the Unix epoch.
    pub modified_micros: Option<i64>,
    /// Remote objects: the entity tag, to detect a change between listing and reading.
    pub etag: Option<String>,
}

/// True if `uri` names a remote object (any scheme but `file://`).
///
/// ```
/// assert!(rillet_io::is_remote("s3://bucket/key.jpg"));
/// assert!(!rillet_io::is_remote("/tmp/a.jpg"));
/// assert!(!rillet_io::is_remote("file:///tmp/a.jpg"));
/// ```
pub fn is_remote(uri: &str) -> bool {
    matches!(uri.split_once("://"), Some((scheme, _)) if scheme != "file" && !scheme.contains('/'))
}

// ---------------------------------------------------------------------------------------
// Stores
// ---------------------------------------------------------------------------------------

static DEFAULT_CONCURRENCY: usize = 32;
static CONCURRENCY: AtomicUsize = AtomicUsize::new(0);

/// Requests in flight at most, for the whole process (`RILLET_IO_CONCURRENCY`, default 32).
pub fn max_concurrency() -> usize {
    match CONCURRENCY.load(Ordering::Relaxed) {
        0 => std::env::var("RILLET_IO_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_CONCURRENCY),
        n => n,
    }
}

/// Change [`max_concurrency`].
pub fn set_max_concurrency(n: usize) {
    CONCURRENCY.store(n.max(1), Ordering::Relaxed);
}

struct Registry {
    /// Options per store root, from [`configure`].
    options: HashMap<String, Vec<(String, String)>>,
    /// Built stores, by `scheme://authority`.
    stores: HashMap<String, Arc<dyn ObjectStore>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        options: HashMap::new(),
        stores: HashMap::new(),
    })
});

/// The runtime remote reads run on: two threads are plenty for network waits, and owning
/// it means callers on any thread (inside another runtime or not) can block on a read.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rillet-io")
        .enable_all()
        .build()
        .expect("cannot start the I/O runtime")
});

/// Bounds requests in flight across every caller.
static IN_FLIGHT: LazyLock<tokio::sync::Semaphore> =
    LazyLock::new(|| tokio::sync::Semaphore::new(max_concurrency()));

/// Settings for the store of `root` (`"s3://bucket"`, `"http://127.0.0.1:9000"`: a bucket
/// or an origin, no path), overriding the environment. Keys are object_store's
/// (`endpoint`, `access_key_id`, `secret_access_key`, `region`, `allow_http`,
/// `skip_signature`, `timeout`, …) plus `max_retries` and `retry_timeout` (seconds). A store
/// already built for that root is rebuilt on next use.
///
/// ```
/// rillet_io::configure("s3://example-bucket", &[("region", "eu-west-1"), ("max_retries", "2")]).unwrap();
/// assert!(rillet_io::configure("s3://example-bucket", &[("max_retries", "many")]).is_err());
/// assert!(rillet_io::configure("s3://example-bucket/some/prefix", &[]).is_err());
/// ```
pub fn configure(root: &str, options: &[(&str, &str)]) -> Result<()> {
    let options: Vec<(String, String)> = options
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    // Validate now, so a typo fails where it was made, not at the first read.
    let url = Url::parse(root)
        .map_err(|e| RilletError::invalid_argument(format!("bad URL {root:?}: {e}")))?;
    let scheme = url.scheme();
    if !matches!(scheme, "s3" | "s3a" | "http" | "https") {
        return Err(RilletError::invalid_argument(format!(
            "cannot configure {scheme}:// stores; s3:// and http(s):// can be"
        )));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(RilletError::invalid_argument(format!(
            "settings apply to a whole bucket or origin: give {} rather than {root}",
            store_key(&url)
        )));
    }
    retry_config(&options)?;
    for (key, _) in &options {
        if matches!(key.as_str(), "max_retries" | "retry_timeout") {
            continue;
        }
        let known = match scheme {
            "s3" | "s3a" => key.parse::<AmazonS3ConfigKey>().is_ok(),
            _ => key.parse::<ClientConfigKey>().is_ok(),
        };
        if !known {
            return Err(RilletError::invalid_argument(format!(
                "unknown option {key:?} for {root}"
            )));
        }
    }
    let key = store_key(&url);
    let mut registry = REGISTRY.lock();
    registry.stores.remove(&key);
    registry.options.insert(key, options);
    Ok(())
}

fn retry_config(options: &[(String, String)]) -> Result<RetryConfig> {
    let mut retry = RetryConfig {
        // A few quick retries, then a clear failure: a dead endpoint should fail a job in
        // seconds, not in object_store's default three minutes.
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
    };
    for (key, value) in options {
        let bad = || {
            RilletError::invalid_argument(format!("option {key} must be a number, not {value:?}"))
        };
        match key.as_str() {
            "max_retries" => retry.max_retries = value.parse().map_err(|_| bad())?,
            "retry_timeout" => {
                retry.retry_timeout = Duration::from_secs_f64(value.parse().map_err(|_| bad())?)
            }
            _ => {}
        }
    }
    Ok(retry)
}

/// The store serving `uri` and the object's path in it. DataFusion is given the same
/// stores, registered under [`store_key`].
pub fn store_for(uri: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let url = Url::parse(uri)
        .map_err(|e| RilletError::invalid_argument(format!("bad URL {uri:?}: {e}")))?;
    let key = store_key(&url);
    let path = ObjectPath::from_url_path(url.path())
        .map_err(|e| RilletError::invalid_argument(format!("bad object path in {uri}: {e}")))?;
    let mut registry = REGISTRY.lock();
    if let Some(store) = registry.stores.get(&key) {
        return Ok((store.clone(), path));
    }
    let options = registry.options.get(&key).cloned().unwrap_or_default();
    let store = build_store(&url, &key, &options)?;
    registry.stores.insert(key, store.clone());
    Ok((store, path))
}

/// `scheme://authority` of `url`: one store (and connection pool) per bucket or origin.
pub fn store_key(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}

fn build_store(url: &Url, key: &str, options: &[(String, String)]) -> Result<Arc<dyn ObjectStore>> {
    let retry = retry_config(options)?;
    let client = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120));
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(url.host_str().unwrap_or(""))
                .with_client_options(client)
                .with_retry(retry);
            // A custom endpoint over plain http (a local S3 server) is allowed when the
            // endpoint itself says http.
            let endpoint = options
                .iter()
                .find(|(k, _)| {
                    k.parse::<AmazonS3ConfigKey>().ok() == Some(AmazonS3ConfigKey::Endpoint)
                })
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    std::env::var("AWS_ENDPOINT_URL")
                        .ok()
                        .or_else(|| std::env::var("AWS_ENDPOINT").ok())
                });
            if endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
            {
                builder = builder.with_allow_http(true);
            }
            for (k, v) in options {
                if let Ok(config) = k.parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(config, v);
                }
            }
            Arc::new(
                builder.build().map_err(|e| {
                    RilletError::invalid_argument(format!("cannot set up {key}: {e}"))
                })?,
            )
        }
        "http" | "https" => {
            let mut builder = HttpBuilder::new()
                .with_url(key)
                .with_client_options(client.with_allow_http(true))
                .with_retry(retry);
            for (k, v) in options {
                if let Ok(config) = k.parse::<ClientConfigKey>() {
                    builder = builder.with_config(config, v);
                }
            }
            Arc::new(
                builder.build().map_err(|e| {
                    RilletError::invalid_argument(format!("cannot set up {key}: {e}"))
                })?,
            )
        }
        other => {
            return Err(RilletError::invalid_argument(format!(
                "{other}:// is not a supported store (local paths, file://, s3:// and http(s):// are)"
            )));
        }
    };
    Ok(store)
}

/// Run `future` on the I/O runtime and wait for it on this thread.
fn block_on<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    RUNTIME.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().expect("the I/O runtime dropped a request")
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

/// Read one request (see [`fetch_many`]).
pub fn fetch(request: &Request) -> std::result::Result<Bytes, FetchError> {
    fetch_many(std::slice::from_ref(request))
        .pop()
        .expect("one result per request")
}

/// Read every request, remote ones concurrently (at most [`max_concurrency`] in flight
/// across the process), local ones here; one result per request, in order.
pub fn fetch_many(requests: &[Request]) -> Vec<std::result::Result<Bytes, FetchError>> {
    let mut results: Vec<Option<std::result::Result<Bytes, FetchError>>> =
        vec![None; requests.len()];
    let mut remote = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        if is_remote(&request.uri) {
            match store_for(&request.uri) {
                Ok((store, path)) => remote.push((i, store, path, request.clone())),
                Err(e) => results[i] = Some(Err(FetchError::Infrastructure(e.to_string()))),
            }
        } else {
            results[i] = Some(read_local(request));
        }
    }
    if !remote.is_empty() {
        let fetched = block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, store, path, request) in remote {
                tasks.spawn(async move {
                    let _permit = IN_FLIGHT
                        .acquire()
                        .await
                        .expect("semaphore is never closed");
                    (i, get_remote(store, path, request).await)
                });
            }
            let mut done = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                if let Ok(result) = joined {
                    done.push(result);
                }
            }
            done
        });
        for (i, result) in fetched {
            results[i] = Some(result);
        }
    }
    // A read task that died (it cannot panic by design, but a runtime shutdown can cancel
    // it) is reported, never silently dropped.
    results
        .into_iter()
        .zip(requests)
        .map(|(r, request)| {
            r.unwrap_or_else(|| {
                Err(FetchError::Infrastructure(format!(
                    "cannot read {}: the read was cancelled",
                    request.uri
                )))
            })
        })
        .collect()
}

async fn get_remote(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    request: Request,
) -> std::result::Result<Bytes, FetchError> {
    let uri = &request.uri;
    let range = match (request.offset, request.length) {
        (_, Some(0)) => return Ok(Bytes::new()),
        (Some(offset), Some(length)) => Some(GetRange::Bounded(offset..offset + length)),
        (None, Some(length)) => Some(GetRange::Bounded(0..length)),
        (Some(offset), None) => Some(GetRange::Offset(offset)),
        (None, None) => None,
    };
    let options = GetOptions {
        range: range.clone(),
        if_match: request.if_match.clone(),
        ..Default::default()
    };
    let result = store.get_opts(&path, options).await;
    let bytes = match result {
        Ok(result) => result
            .bytes()
            .await
            .map_err(|e| classify(uri, e, range.is_some())),
        Err(e) => Err(classify(uri, e, range.is_some())),
    }?;
    if request.exact
        && let Some(length) = request.length
        && (bytes.len() as u64) < length
    {
        return Err(FetchError::Data(format!(
            "{uri}: range of {length} bytes from offset {} runs past the end of the object",
            request.offset.unwrap_or(0)
        )));
    }
    Ok(bytes)
}

/// Sort an object_store error into the row's fault or the store's.
fn classify(uri: &str, error: object_store::Error, ranged: bool) -> FetchError {
    match error {
        object_store::Error::NotFound { .. } => FetchError::Data(format!("{uri}: no such object")),
        object_store::Error::Precondition { .. } => {
            FetchError::Data(format!("{uri}: the object changed since it was listed"))
        }
        other => {
            let text = other.to_string();
            // A range that starts past the end: S3 answers 416, object_store reports it
            // as a generic error.
            if ranged
                && (text.contains("416")
                    || text.contains("InvalidRange")
                    || text.contains("Range Not Satisfiable"))
            {
                FetchError::Data(format!(
                    "{uri}: the byte range starts past the end of the object"
                ))
            } else {
                FetchError::Infrastructure(format!("cannot read {uri}: {text}"))
            }
        }
    }
}

fn read_local(request: &Request) -> std::result::Result<Bytes, FetchError> {
    let uri = &request.uri;
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    let io = |e: std::io::Error| FetchError::Infrastructure(format!("cannot read {uri}: {e}"));
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FetchError::Data(format!("{uri}: no such file")));
        }
        Err(e) => return Err(io(e)),
    };
    let mut buffer = Vec::new();
    if let Some(offset) = request.offset {
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
    }
    match request.length {
        Some(length) => {
            (&mut file)
                .take(length)
                .read_to_end(&mut buffer)
                .map_err(io)?;
            if request.exact && (buffer.len() as u64) < length {
                return Err(FetchError::Data(format!(
                    "{uri}: range of {length} bytes from offset {} runs past the end of the file",
                    request.offset.unwrap_or(0)
                )));
            }
        }
        None => {
            file.read_to_end(&mut buffer).map_err(io)?;
        }
    }
    Ok(Bytes::from(buffer))
}

// ---------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------

/// Files matching `pattern`: a local glob, directory (read recursively) or file; an
/// `s3://bucket/prefix/*.jpg` glob, prefix ("directory") or key; or one `http(s)://` URL
/// (HTTP has no listing). Sorted by URI.
pub fn list_files(pattern: &str) -> Result<Vec<Entry>> {
    let mut entries = if is_remote(pattern) {
        list_remote(pattern)?
    } else {
        list_local(pattern)?
    };
    entries.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(entries)
}

fn list_local(pattern: &str) -> Result<Vec<Entry>> {
    let pattern = pattern.strip_prefix("file://").unwrap_or(pattern);
    let pattern = if Path::new(pattern).is_dir() {
        format!("{}/**/*", pattern.trim_end_matches('/'))
    } else {
        pattern.to_string()
    };
    let paths = glob::glob(&pattern)
        .map_err(|e| RilletError::invalid_argument(format!("bad glob '{pattern}': {e}")))?;
    let mut entries = Vec::new();
    for path in paths {
        let path = path.map_err(|e| RilletError::Io(std::io::Error::from(e)))?;
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            continue;
        }
        let modified_micros = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as i64);
        entries.push(Entry {
            uri: path.display().to_string(),
            size: meta.len(),
            modified_micros,
            etag: None,
        });
    }
    Ok(entries)
}

fn list_remote(pattern: &str) -> Result<Vec<Entry>> {
    let url = Url::parse(pattern)
        .map_err(|e| RilletError::invalid_argument(format!("bad URL {pattern:?}: {e}")))?;
    let key = store_key(&url);
    let (store, _) = store_for(&format!("{key}/"))?;
    // The object path as written (globs and all); Url keeps `*` and `?`… except that `?`
    // starts a query, so take the text after the authority literally.
    let raw_path = pattern[pattern.find("://").unwrap() + 3..]
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("");
    let is_glob = raw_path.contains(['*', '?', '[']);
    let http = matches!(url.scheme(), "http" | "https");
    if http && (is_glob || raw_path.is_empty() || raw_path.ends_with('/')) {
        return Err(RilletError::invalid_argument(format!(
            "cannot list {pattern}: HTTP servers have no listing; read the URLs one by one (a column of URLs with url.download, or read_files on each)"
        )));
    }
    let to_entry = |meta: object_store::ObjectMeta| Entry {
        uri: format!("{key}/{}", meta.location),
        size: meta.size,
        modified_micros: Some(meta.last_modified.timestamp_micros()),
        etag: meta.e_tag.clone(),
    };
    let uri = pattern.to_string();
    let fail = move |e: object_store::Error| {
        RilletError::Io(std::io::Error::other(format!("cannot list {uri}: {e}")))
    };
    if !is_glob {
        let path = ObjectPath::from(raw_path.trim_end_matches('/'));
        if !raw_path.is_empty() && !raw_path.ends_with('/') {
            let store = store.clone();
            let head_path = path.clone();
            let head = block_on(async move {
                store
                    .get_opts(
                        &head_path,
                        GetOptions {
                            head: true,
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|r| r.meta)
            });
            match head {
                Ok(meta) => return Ok(vec![to_entry(meta)]),
                Err(object_store::Error::NotFound { .. }) if !http => {}
                Err(e) => return Err(fail(e)),
            }
        }
        let prefix = (!raw_path.trim_end_matches('/').is_empty()).then_some(path);
        let listed =
            block_on(async move { store.list(prefix.as_ref()).try_collect::<Vec<_>>().await })
                .map_err(fail)?;
        return Ok(listed.into_iter().map(to_entry).collect());
    }
    let first_glob = raw_path.find(['*', '?', '[']).unwrap();
    let prefix = raw_path[..first_glob]
        .rsplit_once('/')
        .map(|(dir, _)| dir.to_string());
    let matcher = glob::Pattern::new(raw_path)
        .map_err(|e| RilletError::invalid_argument(format!("bad glob '{pattern}': {e}")))?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let listed = block_on(async move {
        let prefix = prefix.map(ObjectPath::from);
        store.list(prefix.as_ref()).try_collect::<Vec<_>>().await
    })
    .map_err(fail)?;
    Ok(listed
        .into_iter()
        .filter(|meta| matcher.matches_with(meta.location.as_ref(), options))
        .map(to_entry)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ranges_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let uri = path.display().to_string();
        let results = fetch_many(&[
            Request::whole(&uri),
            Request::range(&uri, 2, 3),
            Request::range(&uri, 8, 5),
            Request::head(&uri, 100),
            Request::whole(&format!("{uri}.missing")),
        ]);
        assert_eq!(&results[0].as_ref().unwrap()[..], b"0123456789");
        assert_eq!(&results[1].as_ref().unwrap()[..], b"234");
        assert!(matches!(&results[2], Err(FetchError::Data(m)) if m.contains("past the end")));
        assert_eq!(results[3].as_ref().unwrap().len(), 10);
        assert!(matches!(&results[4], Err(FetchError::Data(m)) if m.contains("no such file")));
    }

    #[test]
    fn unknown_schemes_and_options_are_rejected() {
        assert!(
            matches!(fetch(&Request::whole("gopher://x/y")), Err(FetchError::Infrastructure(m)) if m.contains("gopher"))
        );
        assert!(configure("s3://b", &[("no_such_option", "1")]).is_err());
        assert!(configure("ftp://b", &[]).is_err());
    }

    #[test]
    fn unreachable_endpoint_fails_fast_naming_the_uri() {
        // Nothing listens on port 9 of loopback: the connection is refused, retried a
        // bounded number of times, then reported with the URI.
        configure("http://127.0.0.1:9", &[("max_retries", "1")]).unwrap();
        let started = std::time::Instant::now();
        let result = fetch(&Request::whole("http://127.0.0.1:9/x.jpg"));
        assert!(
            matches!(&result, Err(FetchError::Infrastructure(m)) if m.contains("http://127.0.0.1:9/x.jpg")),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}
