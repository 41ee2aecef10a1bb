//! Where model files are, and the process-wide table of loaded models: every operator (and
//! every call, on every thread) that names the same files shares one loaded copy.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rillet_common::{Result, RilletError};

/// The directory model names resolve in: `$RILLET_MODELS`, else `$RILLET_CACHE/models`,
/// else `~/.cache/rillet/models` (where `python -m rillet.models` puts them).
///
/// ```
/// assert!(rillet_ai::model::models_dir().ends_with("models")
///     || std::env::var_os("RILLET_MODELS").is_some());
/// ```
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RILLET_MODELS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("RILLET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            Path::new(&home).join(".cache").join("rillet")
        });
    cache.join("models")
}

/// The directory holding a model's files: `name_or_path` itself when it is a directory,
/// else `models_dir()/name_or_path`. A model that is not there is an error saying how to
/// fetch it.
///
/// ```
/// let err = rillet_ai::model::resolve("no-such-model").unwrap_err();
/// assert!(err.to_string().contains("python -m rillet.models"));
/// ```
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    let given = Path::new(name_or_path);
    if given.is_dir() {
        return Ok(given.to_path_buf());
    }
    let dir = models_dir().join(name_or_path);
    if dir.is_dir() {
        return Ok(dir);
    }
    Err(RilletError::invalid_argument(format!(
        "model {name_or_path:?} is neither a directory nor in {}: fetch it with \
         `python -m rillet.models {name_or_path}` (or pass the directory holding its files)",
        models_dir().display()
    )))
}

/// One slot of the table: filled by the first caller, which others wait for.
type Slot = Arc<Mutex<Option<Arc<dyn Any + Send + Sync>>>>;

fn table() -> &'static Mutex<HashMap<(&'static str, PathBuf), Slot>> {
    static TABLE: OnceLock<Mutex<HashMap<(&'static str, PathBuf), Slot>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The model of `kind` loaded from `path`, loading it with `load` on first use. Callers
/// that arrive while it loads wait for that load instead of loading their own copy; inside
/// an engine call the load shows as the operator waiting for "model loading". A failed load
/// is not remembered: the next caller tries again.
///
/// ```
/// use std::path::Path;
/// let a = rillet_ai::model::shared("doc-example", Path::new("/x"), || Ok(vec![1u8; 3])).unwrap();
/// let b = rillet_ai::model::shared("doc-example", Path::new("/x"), || Ok(vec![2u8; 3])).unwrap();
/// assert!(std::sync::Arc::ptr_eq(&a, &b));
/// ```
pub fn shared<T: Send + Sync + 'static>(
    kind: &'static str,
    path: &Path,
    load: impl FnOnce() -> Result<T>,
) -> Result<Arc<T>> {
    let slot = table()
        .lock()
        .entry((kind, path.to_path_buf()))
        .or_default()
        .clone();
    // A caller that finds the slot locked waits for someone else's load: that too is
    // "model loading".
    if let Some(guard) = slot.try_lock()
        && let Some(model) = guard.as_ref()
    {
        return downcast(kind, model.clone());
    }
    rillet_operator::while_loading_model(|| {
        let mut loaded = slot.lock();
        if let Some(model) = loaded.as_ref() {
            return downcast(kind, model.clone());
        }
        let model = Arc::new(load()?);
        *loaded = Some(model.clone());
        Ok(model)
    })
}

fn downcast<T: Send + Sync + 'static>(
    kind: &str,
    model: Arc<dyn Any + Send + Sync>,
) -> Result<Arc<T>> {
    model
        .downcast::<T>()
        .map_err(|_| RilletError::Internal(format!("model table: {kind} holds another type")))
}

/// Read a model's JSON file (a `config.json`), naming the file in errors.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RilletError::invalid_argument(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| RilletError::invalid_argument(format!("{}: {e}", path.display())))
}

/// Cores the model runtimes may use for one call: what this process may run on.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
