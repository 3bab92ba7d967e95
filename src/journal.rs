//! Append-only JSONL journals that survive crashes: the grading tool's record of calls and the
//! router's feedback log.
//!
//! Each record is one line, written with one `write` and synced to disk before
//! [`Journal::append`] returns. On reopening, a torn last line (one without its terminating
//! newline: a write the crash cut short, so never acknowledged) is cut, with a warning. A complete
//! line that does not parse, the last one included, is an error naming the file and line, and
//! nothing is changed: it was written whole, so it may have been acknowledged.
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

/// The layout version of the journals semroute writes (the feedback log's
/// [`Feedback`](crate::feedback::Feedback) and the grading journal's
/// `grade::CallRecord`), in each record's `schema_version` field. A reader takes
/// records of this version and of every earlier one (including those written before versions,
/// without the field); a newer one is an error naming its line.
pub const SCHEMA_VERSION: u32 = 1;

/// One line's record, its `schema_version` (when it has one) checked first.
fn parse_record<T: DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(v) = value.get("schema_version") {
        match v.as_u64() {
            Some(n) if n <= u64::from(SCHEMA_VERSION) => {}
            _ => {
                return Err(format!(
                    "schema_version {v} is not one this version of semroute reads (up to {SCHEMA_VERSION}): \
                     written by a newer one?"
                ))
            }
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

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
#[non_exhaustive]
pub struct Recovered<T> {
    /// The records already there, in order.
    pub records: Vec<T>,
    /// Bytes of a torn last line that were cut (0 = none): a last line without its newline, a
    /// write that never completed, so never acknowledged.
    pub torn_bytes: u64,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (or creates) the journal at `path`, reads what it holds, and cuts a torn last line
    /// (one without its newline), with a warning. A complete line that does not parse, even the
    /// last, is an [`Error::Journal`] naming the file and line, and nothing is changed: nothing is
    /// dropped silently. Something other than a regular file at `path` (a FIFO, a device) is an
    /// [`Error::Io`], and is not read.
    pub fn open(path: impl AsRef<Path>) -> Result<(Journal<T>, Recovered<T>)> {
        let path = path.as_ref().to_path_buf();
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        let mut file = crate::index::open_regular(&path, options).map_err(|e| Error::io(&path, e))?;
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
            if !complete {
                // The last line without its newline: a write cut short, never acknowledged (a
                // record is acknowledged only once its whole line, newline included, is on disk).
                torn_bytes = (bytes.len() - good_end) as u64;
                break;
            }
            let parsed = std::str::from_utf8(line).map_err(|e| e.to_string()).and_then(parse_record::<T>);
            match parsed {
                Ok(r) => records.push(r),
                Err(e) => {
                    return Err(Error::Journal {
                        at: Location::line(&path, line_no),
                        message: format!("{e}; fix or remove it by hand (nothing was changed)"),
                    })
                }
            }
            good_end = end + 1;
            start = end + 1;
        }
        if torn_bytes > 0 {
            tracing::warn!(
                "{}: cut a torn last line ({torn_bytes} bytes without a newline, line {line_no}): a write a crash cut short, never acknowledged",
                path.display()
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rec {
        a: u32,
        #[serde(default)]
        schema_version: u32,
    }

    #[test]
    fn records_carry_their_schema_version_and_older_ones_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        // A line from before versions, then one written now.
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        let (mut log, found) = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(found.records, [Rec { a: 1, schema_version: 0 }]);
        log.append(&Rec { a: 2, schema_version: SCHEMA_VERSION }).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("{\"a\":2,\"schema_version\":1}\n"), "{text}");
        assert_eq!(Journal::<Rec>::open(&path).unwrap().1.records.len(), 2);
        // From a newer semroute: refused, naming the line.
        std::fs::write(&path, "{\"a\":1}\n{\"a\":3,\"schema_version\":2}\n").unwrap();
        let e = Journal::<Rec>::open(&path).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2") && e.contains("schema_version 2"), "{e}");
    }

    #[test]
    fn a_complete_last_line_that_does_not_parse_is_an_error_and_nothing_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        // Ends in a newline: it was written whole (and maybe acknowledged), then damaged.
        for text in ["7\n{not json\n", "7\n\"text\"\n", "7\n8 9\n\n", "7\n\u{0}\u{0}\n"] {
            std::fs::write(&path, text).unwrap();
            let e = Journal::<u32>::open(&path).unwrap_err();
            assert!(matches!(&e, Error::Journal { at, .. } if at.line == Some(2)), "{text:?}: {e:?}");
            assert!(e.to_string().contains("log.jsonl:2"), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "nothing is changed");
        }
        // Bytes that are not UTF-8 on a complete last line, too.
        std::fs::write(&path, b"7\n\xff\xfe\n").unwrap();
        assert!(Journal::<u32>::open(&path).unwrap_err().to_string().contains("log.jsonl:2"));
        assert_eq!(std::fs::read(&path).unwrap(), b"7\n\xff\xfe\n");
    }

    #[test]
    fn only_a_last_line_without_its_newline_is_torn_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        for (text, records, torn) in [
            ("7\n{\"half", vec![7], 6),
            ("7\n8", vec![7], 1),           // parses, but the write never finished
            ("7\n\n  ", vec![7], 2),        // blank lines are skipped; the unfinished one is cut
            ("\u{0}\u{0}\u{0}", vec![], 3), // what a crash can leave on some file systems
            ("7\n8\n", vec![7, 8], 0),
            ("", vec![], 0),
        ] {
            std::fs::write(&path, text).unwrap();
            let (mut log, found) = Journal::<u32>::open(&path).unwrap();
            assert_eq!((found.records.clone(), found.torn_bytes), (records.clone(), torn), "{text:?}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), &text[..text.len() - torn as usize]);
            log.append(&9).unwrap();
            drop(log);
            let (_, again) = Journal::<u32>::open(&path).unwrap();
            assert_eq!(again.records, records.into_iter().chain([9]).collect::<Vec<_>>());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_at_the_journal_path_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Journal::<u32>::open(&p).map(|_| ()).map_err(|e| e.to_string()));
        });
        let e = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("opening a FIFO blocked").unwrap_err();
        assert!(e.contains("not a regular file") && e.contains("log.jsonl"), "{e}");
    }
}
