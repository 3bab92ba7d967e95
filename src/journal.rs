//! Append-only JSONL journals that survive crashes: the grading tool's record of calls and the
//! router's feedback log.
//!
//! Each record is one line, written with one `write` and synced to disk before
//! [`Journal::append`] returns. On reopening, a torn last line (a write the crash cut short, so
//! never acknowledged) is cut; a damaged line before the end is an error naming its line, and
//! nothing is changed.
//!
//! ```
//! use semroute::journal::Journal;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("log.jsonl");
//! let (mut log, found) = Journal::<u32>::open(&path)?;
//! assert!(found.records.is_empty());
//! log.append(&7)?;
//! drop(log);
//! std::fs::OpenOptions::new().append(true).open(&path)?.write_all(b"12")?; // torn: no newline
//! let (_, found) = Journal::<u32>::open(&path)?;
//! assert_eq!((found.records, found.torn_bytes), (vec![7], 2));
//! # use std::io::Write;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Location, Result};

/// An append-only JSONL file of records: each written whole and synced to disk before
/// [`append`](Journal::append) returns, so an acknowledged record survives a crash.
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    file: File,
    _records: PhantomData<fn(&T)>,
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered<T> {
    /// The records already there, in order.
    pub records: Vec<T>,
    /// Bytes of a torn last line that were cut (0 = none): a write that never completed, so never
    /// acknowledged.
    pub torn_bytes: u64,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (or creates) the journal at `path`, reads what it holds, and cuts a torn last line.
    /// A damaged line that is not the last is an error naming it: nothing is dropped silently.
    pub fn open(path: impl AsRef<Path>) -> Result<(Journal<T>, Recovered<T>)> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
        let mut records = Vec::new();
        let mut good_end = 0usize;
        let mut torn_bytes = 0u64;
        let mut start = 0usize;
        let mut line_no = 0usize;
        while start < bytes.len() {
            line_no += 1;
            let (end, complete) = match bytes[start..].iter().position(|&b| b == b'\n') {
                Some(i) => (start + i, true),
                None => (bytes.len(), false),
            };
            let line = &bytes[start..end];
            if complete && line.iter().all(u8::is_ascii_whitespace) {
                good_end = end + 1;
                start = end + 1;
                continue;
            }
            let parsed =
                std::str::from_utf8(line).map_err(|e| e.to_string()).and_then(|t| serde_json::from_str::<T>(t).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) if complete => {
                    records.push(r);
                    good_end = end + 1;
                }
                // The last line, unfinished or unreadable: a write cut short, never acknowledged.
                _ if end + 1 >= bytes.len() => {
                    torn_bytes = (bytes.len() - good_end) as u64;
                    break;
                }
                Err(e) => {
                    return Err(Error::Journal {
                        at: Location::line(&path, line_no),
                        message: format!("{e}; fix or remove it by hand (nothing was changed)"),
                    })
                }
                Ok(_) => unreachable!("an unfinished line is the last one"),
            }
            start = end + 1;
        }
        if torn_bytes > 0 {
            file.set_len(good_end as u64).map_err(|e| Error::io(&path, e))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        file.seek(SeekFrom::End(0)).map_err(|e| Error::io(&path, e))?;
        Ok((Journal { path, file, _records: PhantomData }, Recovered { records, torn_bytes }))
    }

    /// Appends one record as a single write and syncs it to disk.
    pub fn append(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("a record always serialises");
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
