//! Writing an object in pieces: [`Upload`]. Small remote objects are one PUT, large ones a
//! multipart upload whose parts go out while the next arrive; local files are a `depot-fs`
//! temp file committed durably. Nothing appears under the key before [`Upload::finish`].

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use depot_fs::{Root, TempFile};
use object_store::path::Path as StorePath;
use object_store::{Attributes, PutMultipartOptions, PutOptions, WriteMultipart};

use super::{StoreError, map_error};

/// Objects up to this size are one PUT (buffered): one request instead of three.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of multipart uploads.
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once per upload: enough to keep a fast archive busy while the next part
/// fills, at `PART_SIZE` of memory each.
const PARTS_IN_FLIGHT: usize = 2;

/// An object being written; see the module docs.
pub struct Upload {
    location: String,
    state: State,
}

enum State {
    Local { root: Root, dest: std::path::PathBuf, file: Option<TempFile> },
    Single { store: Arc<dyn object_store::ObjectStore>, path: StorePath, attributes: Attributes, buffer: Vec<u8> },
    Multipart { writer: WriteMultipart },
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upload({})", self.location)
    }
}

fn io(location: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Failed { location: location.to_owned(), message: err.to_string() }
}

impl Upload {
    pub(super) async fn local(dir: &Path, key: &str, location: String) -> Result<Self, StoreError> {
        let (dir, key) = (dir.to_path_buf(), key.to_owned());
        let state = tokio::task::spawn_blocking(move || -> Result<State, StoreError> {
            depot_fs::create_dir_all_durably(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
            let root = Root::open(&dir)
                .map_err(|err| StoreError::Failed { location: dir.display().to_string(), message: err.to_string() })?;
            let dest =
                root.resolve(&key).map_err(|err| StoreError::BadKey { key: key.clone(), reason: err.to_string() })?;
            let file = root.temp_file().map_err(|source| StoreError::Io { path: root.tmp_dir(), source })?;
            Ok(State::Local { root, dest, file: Some(file) })
        })
        .await
        .map_err(|err| StoreError::Failed { location: location.clone(), message: err.to_string() })??;
        Ok(Self { location, state })
    }

    pub(super) async fn remote(
        store: Arc<dyn object_store::ObjectStore>,
        path: StorePath,
        size: u64,
        attributes: Attributes,
        location: String,
    ) -> Result<Self, StoreError> {
        let state = if size <= SINGLE_PUT_MAX {
            let buffer = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            State::Single { store, path, attributes, buffer }
        } else {
            let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
            let upload =
                store.put_multipart_opts(&path, options).await.map_err(|err| map_error(location.clone(), err))?;
            State::Multipart { writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE) }
        };
        Ok(Self { location, state })
    }

    /// Where the object goes, for messages.
    #[must_use]
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Appends `data`. May wait while earlier parts are still going out.
    ///
    /// # Errors
    /// [`StoreError`]: a part upload or a local write failed.
    pub async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        match &mut self.state {
            State::Local { file, .. } => {
                let mut taken = file.take().expect("a local upload keeps its file until finished");
                let location = self.location.clone();
                let (returned, result) = tokio::task::spawn_blocking(move || {
                    let result = std::io::Write::write_all(&mut taken, &data);
                    (taken, result)
                })
                .await
                .map_err(|err| StoreError::Failed { location: location.clone(), message: err.to_string() })?;
                *file = Some(returned);
                result.map_err(io(&self.location))
            }
            State::Single { buffer, .. } => {
                buffer.extend_from_slice(&data);
                Ok(())
            }
            State::Multipart { writer } => {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|err| map_error(self.location.clone(), err))?;
                writer.put(data);
                Ok(())
            }
        }
    }

    /// Makes the object visible under its key (durably, for local storage).
    ///
    /// # Errors
    /// [`StoreError`]; the object is then not written.
    pub async fn finish(self) -> Result<(), StoreError> {
        let location = self.location;
        match self.state {
            State::Local { root: _root, dest, file } => {
                let file = file.expect("a local upload keeps its file until finished");
                tokio::task::spawn_blocking(move || file.commit(&dest))
                    .await
                    .map_err(|err| StoreError::Failed { location: location.clone(), message: err.to_string() })?
                    .map_err(|err| StoreError::Failed { location, message: err.to_string() })
            }
            State::Single { store, path, attributes, buffer } => {
                let options = PutOptions { attributes, ..PutOptions::default() };
                store.put_opts(&path, buffer.into(), options).await.map_err(|err| map_error(location, err))?;
                Ok(())
            }
            State::Multipart { writer } => {
                writer.finish().await.map_err(|err| map_error(location, err))?;
                Ok(())
            }
        }
    }

    /// Gives up: nothing is written, and a multipart upload is aborted.
    pub async fn abort(self) {
        match self.state {
            // The temp file deletes itself when dropped.
            State::Local { .. } | State::Single { .. } => {}
            State::Multipart { writer } => {
                if let Err(err) = writer.abort().await {
                    tracing::warn!(location = self.location, %err, "cannot abort a multipart upload");
                }
            }
        }
    }
}

/// Writes `data` to `dir/key` durably (fsync file, rename or link, fsync directory). With
/// `create`, an existing object is left alone and [`StoreError::Exists`] returned: the file is
/// hard-linked into place, which fails on an existing name.
pub(super) fn write_local(dir: &Path, key: &str, data: &[u8], create: bool) -> Result<(), StoreError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    depot_fs::create_dir_all_durably(dir).map_err(io_at(dir))?;
    let root = Root::open(dir)
        .map_err(|err| StoreError::Failed { location: dir.display().to_string(), message: err.to_string() })?;
    let dest = root.resolve(key).map_err(|err| StoreError::BadKey { key: key.to_owned(), reason: err.to_string() })?;
    let mut tmp = root.temp_file().map_err(io_at(&root.tmp_dir()))?;
    std::io::Write::write_all(&mut tmp, data).map_err(io_at(tmp.path()))?;
    if !create {
        return tmp
            .commit(&dest)
            .map_err(|err| StoreError::Failed { location: dest.display().to_string(), message: err.to_string() });
    }
    tmp.file().sync_all().map_err(io_at(tmp.path()))?;
    let parent = dest.parent().unwrap_or(dir);
    depot_fs::create_dir_all_durably(parent).map_err(io_at(parent))?;
    match std::fs::hard_link(tmp.path(), &dest) {
        Ok(()) => depot_fs::sync_dir(parent).map_err(io_at(parent)),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(StoreError::Exists { location: dest.display().to_string() })
        }
        Err(source) => Err(StoreError::Io { path: dest, source }),
    }
    // `tmp` is dropped here and deletes its name; the linked one stays.
}
