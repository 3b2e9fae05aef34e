//! The lake's storage: every file other than the WAL (Parquet files, manifests,
//! results) is read and written here, through `object_store`.
//!
//! Invariants:
//! - **Durable puts**: [`Lake::put_durable`] returns only once the object is durable.
//!   object_store's local backend writes a staging file and renames it into place but
//!   never fsyncs, so for a local lake this module fsyncs the file and every directory
//!   from it up to the lake root. (An object store such as S3 is durable on `put`.)
//! - A large file is written back to disk in 1 MiB steps before its final fsync, so
//!   the WAL's syncs never queue behind a whole Parquet file at the device.
//! - Relative paths passed in are lake-relative (`deliveries/date=…/x.parquet`) and
//!   are checked: no `..`, no absolute paths, no empty segments.

pub(crate) mod append;
pub mod compact;
pub mod dedup_file;
pub mod dedup_state;
pub mod manifest;
pub mod persist;
pub mod retention;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use thiserror::Error;

/// Errors of lake storage.
#[derive(Debug, Error)]
pub enum LakeError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage error on {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("cannot make {path} durable (fsync): {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid lake path {0:?}")]
    BadPath(String),
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// An object listed in the lake.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Lake-relative path.
    pub path: String,
    pub size: u64,
}

/// The storage behind a data directory.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    url: ObjectStoreUrl,
    /// Prefix of the lake inside the store.
    root: ObjectPath,
    /// Set for a local lake: where to fsync.
    local_root: Option<PathBuf>,
}

impl Lake {
    /// A lake in a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, LakeError> {
        crate::sys::create_dir_all_durable(dir).map_err(|source| LakeError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let abs = dir.canonicalize().map_err(|source| LakeError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let root = ObjectPath::from_absolute_path(&abs).map_err(|e| LakeError::Store {
            path: abs.display().to_string(),
            source: e.into(),
        })?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            url: ObjectStoreUrl::local_filesystem(),
            root,
            local_root: Some(abs),
        })
    }

    /// The object store holding the lake.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL under which the store is registered with DataFusion.
    pub fn url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    /// The local directory of the lake, if it is local.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// The full object path of a lake-relative path.
    pub fn object_path(&self, rel: &str) -> Result<ObjectPath, LakeError> {
        check_rel(rel)?;
        Ok(rel
            .split('/')
            .fold(self.root.clone(), |p, part| p.join(part)))
    }

    /// Writes `bytes` at `rel`, replacing any object there, and returns once it is
    /// durable (see the module docs).
    pub async fn put_durable(&self, rel: &str, bytes: Bytes) -> Result<(), LakeError> {
        let path = self.object_path(rel)?;
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|source| LakeError::Store {
                path: rel.to_string(),
                source,
            })?;
        if let Some(root) = &self.local_root {
            // Tests inject a failed sync after the rename (`lake_sync:<top folder>`).
            let top = rel.split('/').next().unwrap_or(rel);
            crate::sys::failpoint::error(&format!("lake_sync:{top}")).map_err(|source| {
                LakeError::Sync {
                    path: root.join(rel),
                    source,
                }
            })?;
            let root = root.clone();
            let rel = rel.to_string();
            tokio::task::spawn_blocking(move || sync_local(&root, &rel))
                .await
                .map_err(|e| LakeError::Sync {
                    path: PathBuf::from(e.to_string()),
                    source: std::io::Error::other("fsync task failed"),
                })??;
        }
        Ok(())
    }

    /// Reads the object at `rel`; `None` if there is none.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>, LakeError> {
        let path = self.object_path(rel)?;
        match self.store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|source| LakeError::Store {
                    path: rel.to_string(),
                    source,
                }),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(LakeError::Store {
                path: rel.to_string(),
                source,
            }),
        }
    }

    /// Deletes the object at `rel`; a missing object is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), LakeError> {
        let path = self.object_path(rel)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(LakeError::Store {
                path: rel.to_string(),
                source,
            }),
        }
    }

    /// Removes the staging files (`<name>#<digits>`) interrupted writes left under the
    /// lake-relative `folders`; returns what it removed. object_store's local backend
    /// writes a staging file and renames it into place, and does not list them.
    pub fn remove_staging_files(&self, folders: &[&str]) -> Vec<PathBuf> {
        let Some(root) = &self.local_root else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        let mut stack: Vec<PathBuf> = folders
            .iter()
            .filter(|f| check_rel(f).is_ok())
            .map(|f| root.join(f))
            .collect();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path);
                } else if is_staging_name(&entry.file_name().to_string_lossy())
                    && std::fs::remove_file(&path).is_ok()
                {
                    removed.push(path);
                }
            }
        }
        removed
    }

    /// Every object under the lake-relative `prefix`, recursively.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, LakeError> {
        let path = self.object_path(prefix)?;
        let root_len = self.root.as_ref().len();
        let metas: Vec<_> = match self.store.list(Some(&path)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => {
                return Err(LakeError::Store {
                    path: prefix.to_string(),
                    source,
                });
            }
        };
        Ok(metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let rel = full
                    .get(root_len..)
                    .unwrap_or(full)
                    .trim_start_matches('/')
                    .to_string();
                Listed {
                    path: rel,
                    size: m.size,
                }
            })
            .collect())
    }
}

/// `name#123`: a staging file of object_store's local backend.
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(base, n)| {
        !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

fn check_rel(rel: &str) -> Result<(), LakeError> {
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\\'));
    if bad {
        Err(LakeError::BadPath(rel.to_string()))
    } else {
        Ok(())
    }
}

/// fsyncs `root/rel` and each directory from its parent up to `root`.
fn sync_local(root: &Path, rel: &str) -> Result<(), LakeError> {
    let file = root.join(rel);
    let sync = |p: &Path| {
        File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|source| LakeError::Sync {
                path: p.to_path_buf(),
                source,
            })
    };
    let data = File::open(&file).map_err(|source| LakeError::Sync {
        path: file.clone(),
        source,
    })?;
    crate::sys::paced_writeback(&data, 0)
        .and_then(|_| data.sync_all())
        .map_err(|source| LakeError::Sync {
            path: file.clone(),
            source,
        })?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        sync(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::local(dir.path()).unwrap();
        lake.put_durable(
            "t/date=2026-01-01/hour=00/a.parquet",
            Bytes::from_static(b"abc"),
        )
        .await
        .unwrap();
        assert!(
            dir.path()
                .join("t/date=2026-01-01/hour=00/a.parquet")
                .exists()
        );
        assert_eq!(
            lake.get("t/date=2026-01-01/hour=00/a.parquet")
                .await
                .unwrap()
                .unwrap(),
            Bytes::from_static(b"abc")
        );
        let listed = lake.list("t").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].path, "t/date=2026-01-01/hour=00/a.parquet");
        lake.delete("t/date=2026-01-01/hour=00/a.parquet")
            .await
            .unwrap();
        assert!(
            lake.get("t/date=2026-01-01/hour=00/a.parquet")
                .await
                .unwrap()
                .is_none()
        );
        assert!(lake.list("missing").await.unwrap().is_empty());
    }

    #[test]
    fn staging_files_left_by_interrupted_writes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::local(dir.path()).unwrap();
        let part = dir.path().join("deliveries/date=2026-01-01/hour=00");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::create_dir_all(dir.path().join("_manifest")).unwrap();
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        for f in ["a.parquet#1", "a.parquet", "b#x"] {
            std::fs::write(part.join(f), b"x").unwrap();
        }
        std::fs::write(
            dir.path().join("_manifest/00000000000000000002.json#17"),
            b"{",
        )
        .unwrap();
        std::fs::write(dir.path().join("wal/keep#1"), b"x").unwrap();
        let mut removed = lake.remove_staging_files(&["deliveries", "_manifest"]);
        removed.sort();
        assert_eq!(
            removed,
            vec![
                dir.path()
                    .canonicalize()
                    .unwrap()
                    .join("_manifest/00000000000000000002.json#17"),
                dir.path()
                    .canonicalize()
                    .unwrap()
                    .join("deliveries/date=2026-01-01/hour=00/a.parquet#1"),
            ]
        );
        assert!(part.join("a.parquet").exists() && part.join("b#x").exists());
        assert!(
            dir.path().join("wal/keep#1").exists(),
            "the WAL is not the lake's"
        );
    }

    #[test]
    fn path_tricks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::local(dir.path()).unwrap();
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/../../b"] {
            assert!(lake.object_path(bad).is_err(), "{bad} should be refused");
        }
    }
}
