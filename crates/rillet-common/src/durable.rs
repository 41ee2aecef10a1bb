//! Durable local writes, and a simulated power cut that proves them.
//!
//! A file's bytes survive a power cut only once the file was synced, and a file's *name*
//! (its entry in a directory: a create, a rename, a delete) only once its directory was
//! synced. A killed process loses neither; a machine that loses power loses both. The
//! checkpoint protocol therefore syncs through [`sync_file`] and [`sync_dir`] wherever a
//! later step relies on an earlier one having reached the disk: a checkpoint's artifacts
//! and manifest before any sink makes its output visible, a staged file before the
//! checkpoint naming it completes, a withdrawal before the rows are written again.
//!
//! [`PowerCut`] checks that this is enough. While one records a directory tree, every sync
//! through this module notes what it made durable: a file's bytes (by inode, so a rename
//! keeps them) and a directory's entries. [`PowerCut::cut`] then puts the tree back to what
//! a machine would find after losing power at that instant: every directory holds the
//! entries it held when last synced (a name created since is gone, a name removed since is
//! back), and every file the bytes it held when last synced (nothing if never). Whatever
//! was never synced is lost, so a missing sync shows up as lost or repeated output.
//!
//! ```
//! use rillet_common::durable::{PowerCut, sync_dir, sync_file};
//!
//! let dir = tempfile::tempdir()?;
//! let cut = PowerCut::record(dir.path())?;
//! let (kept, lost) = (dir.path().join("kept"), dir.path().join("lost"));
//! std::fs::write(&kept, "synced")?;
//! sync_file(&kept)?;
//! sync_dir(dir.path())?; // the name "kept" is durable now
//! std::fs::write(&lost, "never synced")?;
//! std::fs::write(&kept, "changed after the sync")?;
//! cut.cut()?;
//! assert_eq!(std::fs::read_to_string(&kept)?, "synced");
//! assert!(!lost.exists());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Sync the file at `path`: its bytes survive a power cut from now on.
pub fn sync_file(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    sync_open_file(&file, path)
}

/// Sync `file`, open at `path`.
pub fn sync_open_file(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    note(|recorder| recorder.file_synced(path));
    Ok(())
}

/// Sync the directory `path`: the names created, renamed and removed in it survive a
/// power cut from now on.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()?;
    note(|recorder| recorder.dir_synced(path));
    Ok(())
}

/// Sync `path`'s directory and every directory above it up to `top` (inclusive): what a
/// new file in directories just created needs for its name to survive.
pub fn sync_dirs_up_to(path: &Path, top: &Path) -> io::Result<()> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        sync_dir(d)?;
        if d == top || !d.starts_with(top) {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// What is durable in a recorded tree: file bytes by inode, directory entries by path.
#[derive(Debug, Default)]
struct Recorder {
    root: PathBuf,
    files: HashMap<u64, Vec<u8>>,
    dirs: HashMap<PathBuf, BTreeMap<OsString, Entry>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    inode: u64,
    is_dir: bool,
}

/// The one tree being recorded, if any (syncs elsewhere pass through untouched).
static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

fn note(f: impl FnOnce(&mut Recorder) -> io::Result<()>) {
    let mut guard = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(recorder) = guard.as_mut() {
        // An error: the file was removed right after its sync, so it has nothing to keep.
        let _ = f(recorder);
    }
}

impl Recorder {
    fn under(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
    }

    fn file_synced(&mut self, path: &Path) -> io::Result<()> {
        if self.under(path) {
            let inode = std::fs::metadata(path)?.ino();
            self.files.insert(inode, std::fs::read(path)?);
        }
        Ok(())
    }

    fn dir_synced(&mut self, path: &Path) -> io::Result<()> {
        if self.under(path) {
            self.dirs.insert(path.to_path_buf(), entries(path)?);
        }
        Ok(())
    }

    /// Everything under the root, taken as durable (the state before recording began).
    fn snapshot(&mut self) -> io::Result<()> {
        let root = self.root.clone();
        self.snapshot_dir(&root)
    }

    fn snapshot_dir(&mut self, dir: &Path) -> io::Result<()> {
        let listed = entries(dir)?;
        for (name, entry) in &listed {
            let path = dir.join(name);
            if entry.is_dir {
                self.snapshot_dir(&path)?;
            } else {
                self.files.insert(entry.inode, std::fs::read(&path)?);
            }
        }
        self.dirs.insert(dir.to_path_buf(), listed);
        Ok(())
    }

    /// Put `dir` back to its durable entries, recursively.
    fn restore(&self, dir: &Path) -> io::Result<()> {
        let durable = self.dirs.get(dir).cloned().unwrap_or_default();
        for (name, entry) in entries(dir)? {
            if durable.get(&name).map(|e| e.is_dir) != Some(entry.is_dir) {
                remove(&dir.join(&name), entry.is_dir)?;
            }
        }
        for (name, entry) in &durable {
            let path = dir.join(name);
            if entry.is_dir {
                std::fs::create_dir_all(&path)?;
                self.restore(&path)?;
            } else {
                let bytes = self.files.get(&entry.inode).map_or(&[][..], Vec::as_slice);
                std::fs::write(&path, bytes)?;
            }
        }
        Ok(())
    }
}

fn entries(dir: &Path) -> io::Result<BTreeMap<OsString, Entry>> {
    let mut listed = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        listed.insert(
            entry.file_name(),
            Entry {
                inode: metadata.ino(),
                is_dir: metadata.is_dir(),
            },
        );
    }
    Ok(listed)
}

fn remove(path: &Path, is_dir: bool) -> io::Result<()> {
    if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Records which writes under a directory were synced, and cuts the power (see the module
/// docs). One at a time per process; recording stops when it is dropped.
#[derive(Debug)]
pub struct PowerCut {
    root: PathBuf,
}

impl PowerCut {
    /// Start recording the tree under `root`, taking what is there now as durable. An
    /// error if another recording is under way.
    pub fn record(root: &Path) -> io::Result<Self> {
        let root = root.canonicalize()?;
        let mut guard = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            return Err(io::Error::other("a power cut is already being recorded"));
        }
        let mut recorder = Recorder {
            root: root.clone(),
            ..Recorder::default()
        };
        recorder.snapshot()?;
        *guard = Some(recorder);
        Ok(Self { root })
    }

    /// Lose power now: put the tree back to what was synced. Every writer must have stopped
    /// (a job ended); recording goes on from the state left.
    pub fn cut(&self) -> io::Result<()> {
        let mut guard = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
        let recorder = guard
            .as_mut()
            .ok_or_else(|| io::Error::other("no power cut is being recorded"))?;
        recorder.restore(&self.root)?;
        // What the machine finds on its return is on disk: durable from here.
        recorder.files.clear();
        recorder.dirs.clear();
        recorder.snapshot()
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        *RECORDER.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One recording per process: the tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn a_rename_is_lost_until_its_directory_is_synced_and_a_removal_comes_back() {
        let _serial = SERIAL.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (staged, visible) = (root.join("staged"), root.join("visible"));
        std::fs::write(&staged, "rows").unwrap();
        let cut = PowerCut::record(&root).unwrap(); // "staged" exists, durable
        sync_file(&staged).unwrap();
        std::fs::rename(&staged, &visible).unwrap();
        cut.cut().unwrap();
        assert!(
            staged.exists() && !visible.exists(),
            "the rename was not synced"
        );

        std::fs::rename(&staged, &visible).unwrap();
        sync_dir(&root).unwrap();
        std::fs::remove_file(&visible).unwrap();
        cut.cut().unwrap();
        assert_eq!(std::fs::read_to_string(&visible).unwrap(), "rows");
        assert!(!staged.exists());
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let _serial = SERIAL.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let cut = PowerCut::record(&root).unwrap();
        let file = root.join("a").join("b").join("f");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "x").unwrap();
        sync_file(&file).unwrap();
        sync_dir(file.parent().unwrap()).unwrap();
        cut.cut().unwrap();
        assert!(
            !root.join("a").exists(),
            "a's entry in the root was never synced"
        );

        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "x").unwrap();
        sync_file(&file).unwrap();
        sync_dirs_up_to(&file, &root).unwrap();
        cut.cut().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        assert!(PowerCut::record(&root).is_err(), "one recording at a time");
    }
}
