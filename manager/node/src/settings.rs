//! A node's data directory: where each file lives, and the node's own settings.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use fleetgate_manager_store::{ManagerNode, NodeId};
use serde::{Deserialize, Serialize};

use crate::Error;

/// What a node needs to know about itself to start: written by `init` and `join`, read by
/// `serve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    pub node_id: NodeId,
    pub addrs: ManagerNode,
}

/// The layout of a node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `node.json`: [`NodeSettings`].
    pub fn settings(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// `store/`: the sled database (Raft log, vote, state machine, snapshots).
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// `tls/`: the cluster CA and this node's certificate, PEM.
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// `admin.token`: the bootstrap admin token, mode 0600, written by `init`.
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }

    pub fn load_settings(&self) -> Result<NodeSettings, Error> {
        let path = self.settings();
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub fn save_settings(&self, settings: &NodeSettings) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(settings).map_err(|e| Error::Corrupt {
            path: self.settings(),
            reason: e.to_string(),
        })?;
        write_file(&self.settings(), &text, false)
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a crash leaves either the
/// old file or the new one. `private` files get mode 0600 from their creation on.
pub fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(data).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
