//! A local checkpoint directory whose writes survive a power cut.
//!
//! object_store's `LocalFileSystem` writes each object through a temporary file and a
//! rename, so a killed process leaves an object absent or whole; it syncs nothing, so a
//! power cut can still take a manifest the sinks already acted on (their output visible to
//! readers, then withdrawn by a recovery that fell back past it). [`DurableLocal`] is that
//! store with the syncs added: a write returns once the object's bytes and its name (its
//! directory, and every directory the write created) are on disk, and a delete once its
//! directory is. An S3 store needs none of this: a PUT is durable when acknowledged.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rillet_common::durable;

/// [`LocalFileSystem`] under `root`, with every write and delete synced (see the module
/// docs).
#[derive(Debug)]
pub(crate) struct DurableLocal {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
}

impl DurableLocal {
    pub(crate) fn new(inner: LocalFileSystem, root: PathBuf) -> Self {
        Self {
            inner: Arc::new(inner),
            root: root.canonicalize().unwrap_or(root),
        }
    }

    fn io_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
        object_store::Error::Generic {
            store: "DurableLocal",
            source: format!("cannot sync {}: {e}", path.display()).into(),
        }
    }

    /// Sync the file at `location` and the directories holding its name, up to the
    /// highest one that did not exist before the write (`created_from`), or its own.
    fn sync_written(&self, location: &Path, created_from: Option<PathBuf>) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        durable::sync_file(&file).map_err(|e| Self::io_error(&file, e))?;
        let top = created_from
            .and_then(|dir| dir.parent().map(std::path::Path::to_path_buf))
            .unwrap_or_else(|| file.parent().unwrap_or(&self.root).to_path_buf());
        durable::sync_dirs_up_to(&file, &top).map_err(|e| Self::io_error(&file, e))
    }

    /// The highest directory above `location` that does not exist yet.
    fn first_missing_dir(&self, location: &Path) -> Result<Option<PathBuf>> {
        let file = self.inner.path_to_filesystem(location)?;
        let mut missing = None;
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d.exists() || !d.starts_with(&self.root) {
                break;
            }
            missing = Some(d.to_path_buf());
            dir = d.parent();
        }
        Ok(missing)
    }
}

impl std::fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DurableLocal({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let created_from = self.first_missing_dir(location)?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.sync_written(location, created_from)?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // The checkpoint store writes every object whole; nothing uploads in parts.
        let _ = (location, opts);
        Err(object_store::Error::NotImplemented {
            operation: "multipart upload to a durable local checkpoint store".into(),
            implementer: "DurableLocal".into(),
        })
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        self.inner
            .delete_stream(locations)
            .map(move |deleted| {
                let location = deleted?;
                let file = inner.path_to_filesystem(&location)?;
                if let Some(dir) = file.parent().filter(|d| d.exists()) {
                    durable::sync_dir(dir).map_err(|e| Self::io_error(dir, e))?;
                }
                Ok(location)
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let created_from = self.first_missing_dir(to)?;
        self.inner.copy_opts(from, to, options).await?;
        self.sync_written(to, created_from)
    }
}
