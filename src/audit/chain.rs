//! Checking the chain: `flowgate audit verify FILE…`, and reading log files back.
//!
//! Every line's `prev` is the SHA-256 of the line before it (`log`). Walking the files in order
//! (oldest first; rotated and gzipped ones too), a line whose `prev` is not the hash of the line
//! before it is where the file was tampered with:
//!
//! * the line before it was **changed** (its hash is no longer what the next line recorded),
//!   or lines between the two were **removed**;
//! * or it was **moved**: its `prev` is the hash of a line found elsewhere in the files.
//!
//! The first line given may continue a chain whose start is not among the files (a rotated
//! subset): its `prev` is taken as the start and reported, `genesis` when it is the first line
//! ever. The last line cannot be checked by a line after it: compare the head the summary
//! prints with `<log>.head` or with a copy kept elsewhere (shipping the log off the host is what
//! makes the end of the chain tamper-evident too).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::log::{GENESIS, hex, line_hash, parse_hash};

/// The lines of a log file, plain or gzipped (by its magic bytes), without their newlines.
pub fn read_lines(path: &Path) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 2];
    let gzipped = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = File::open(path)?;
    let reader: Box<dyn BufRead> = if gzipped {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    Ok(Box::new(reader.split(b'\n')))
}

/// One place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub problem: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.problem)
    }
}

/// What walking the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub lines: usize,
    /// The `prev` of the first line: where the files pick the chain up.
    pub start: [u8; 32],
    /// The hash of the last line.
    pub head: [u8; 32],
    pub breaks: Vec<Break>,
}

impl Verified {
    pub fn intact(&self) -> bool {
        self.breaks.is_empty()
    }

    /// The start, as the summary says it.
    pub fn start_text(&self) -> String {
        if self.start == GENESIS { "genesis".to_owned() } else { hex(&self.start) }
    }
}

/// The `prev` of one line, if it is a chained record.
fn prev_of(line: &[u8]) -> Result<[u8; 32], String> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("not a JSON record ({e})"))?;
    let prev = value.get("prev").and_then(serde_json::Value::as_str).ok_or("a record without `prev`")?;
    parse_hash(prev).ok_or_else(|| format!("`prev` `{prev}` is not a SHA-256 in hex"))
}

/// Walks `files` in order and reports every break of the chain.
pub fn verify(files: &[PathBuf]) -> std::io::Result<Verified> {
    struct Line {
        file: usize,
        number: usize,
        hash: [u8; 32],
        prev: Result<[u8; 32], String>,
    }
    // Only each line's hash and link are kept, not the line.
    let mut lines = Vec::new();
    for (file, path) in files.iter().enumerate() {
        for (index, line) in read_lines(path)?.enumerate() {
            let line = line?;
            lines.push(Line { file, number: index + 1, hash: line_hash(&line), prev: prev_of(&line) });
        }
    }
    // Where each line is, to tell a moved line from a changed one.
    let mut places: HashMap<[u8; 32], (usize, usize)> = HashMap::with_capacity(lines.len());
    for line in &lines {
        places.entry(line.hash).or_insert((line.file, line.number));
    }
    let mut breaks = Vec::new();
    let mut start = GENESIS;
    for (i, line) in lines.iter().enumerate() {
        let problem = match (&line.prev, i.checked_sub(1).map(|before| &lines[before])) {
            (Err(problem), _) => Some(problem.clone()),
            (Ok(prev), None) => {
                start = *prev;
                None
            }
            (Ok(prev), Some(before)) if *prev == before.hash => None,
            (Ok(prev), Some(before)) => Some(match places.get(prev) {
                Some(&(file, number)) => {
                    format!(
                        "out of order: it follows line {number} of {}, not the line before it",
                        files[file].display()
                    )
                }
                None => format!(
                    "does not follow the line before it: line {} of {} was changed, or lines after it were removed",
                    before.number,
                    files[before.file].display()
                ),
            }),
        };
        if let Some(problem) = problem {
            breaks.push(Break { file: files[line.file].clone(), line: line.number, problem });
        }
    }
    let head = lines.last().map_or(GENESIS, |line| line.hash);
    Ok(Verified { lines: lines.len(), start, head, breaks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::DecisionLog;

    /// A log of `n` chained records, written by the real writer.
    async fn log_of(dir: &Path, n: usize) -> PathBuf {
        let path = dir.join("decisions.jsonl");
        let log = DecisionLog::open(&path).unwrap();
        for i in 0..n {
            log.write(&serde_json::json!({"n": i})).await.unwrap();
        }
        path
    }

    fn edit(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
        change(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[tokio::test]
    async fn an_untouched_log_verifies_from_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 10).await;
        let verified = verify(std::slice::from_ref(&path)).unwrap();
        assert!(verified.intact(), "{:?}", verified.breaks);
        assert_eq!((verified.lines, verified.start_text().as_str()), (10, "genesis"));
    }

    #[tokio::test]
    async fn an_edited_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 10).await;
        edit(&path, |lines| lines[4] = lines[4].replace("\"n\":4", "\"n\":40"));
        let verified = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(verified.breaks.len(), 1, "{:?}", verified.breaks);
        assert_eq!(verified.breaks[0].line, 6);
        assert!(verified.breaks[0].problem.contains("line 5 of"), "{}", verified.breaks[0]);
    }

    #[tokio::test]
    async fn a_removed_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 10).await;
        edit(&path, |lines| {
            lines.remove(3);
        });
        let verified = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(verified.breaks.iter().map(|b| b.line).collect::<Vec<_>>(), [4]);
        assert!(verified.breaks[0].problem.contains("removed"));
    }

    #[tokio::test]
    async fn a_swapped_pair_is_found_at_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 10).await;
        edit(&path, |lines| lines.swap(2, 3));
        let verified = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(verified.breaks[0].line, 3, "{:?}", verified.breaks);
        assert!(verified.breaks[0].problem.contains("out of order"), "{}", verified.breaks[0]);
    }

    #[tokio::test]
    async fn the_chain_goes_on_across_a_rotation_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let rotated = dir.path().join("decisions.jsonl.1");
        let log = DecisionLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 1})).await.unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.write(&serde_json::json!({"n": 2})).await.unwrap(); // still into the renamed file
        log.reopen().unwrap();
        log.write(&serde_json::json!({"n": 3})).await.unwrap();
        drop(log);
        // A restart appends to the current file and links to its last line.
        let log = DecisionLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 4})).await.unwrap();
        log.checkpoint();
        drop(log);
        // A restart into a file rotated away while flowgate was down links to the kept head.
        let older = dir.path().join("decisions.jsonl.0");
        std::fs::rename(&path, &older).unwrap();
        let log = DecisionLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 5})).await.unwrap();
        drop(log);
        let verified = verify(&[rotated.clone(), older.clone(), path.clone()]).unwrap();
        assert!(verified.intact(), "{:?}", verified.breaks);
        assert_eq!(verified.lines, 5);
        // Out of order, the files do not verify.
        assert!(!verify(&[older, rotated]).unwrap().intact());
    }

    #[tokio::test]
    async fn gzipped_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5).await;
        let gz = dir.path().join("decisions.jsonl.1.gz");
        let mut encoder = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &std::fs::read(&path).unwrap()).unwrap();
        encoder.finish().unwrap();
        let verified = verify(&[gz]).unwrap();
        assert!(verified.intact());
        assert_eq!(verified.lines, 5);
    }

    #[test]
    fn a_prev_that_is_not_hex_is_a_break_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let sneaky = format!("{}a", "€".repeat(21)); // 64 bytes, not on char boundaries
        std::fs::write(&path, format!("{{\"prev\":\"{sneaky}\"}}\n{{\"prev\":\"+{}\"}}\n", "0".repeat(63))).unwrap();
        let verified = verify(&[path]).unwrap();
        assert_eq!(verified.breaks.len(), 2, "{:?}", verified.breaks);
        assert!(verified.breaks.iter().all(|b| b.problem.contains("is not a SHA-256")));
    }

    #[test]
    fn a_line_that_is_not_a_record_is_a_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "not json\n").unwrap();
        let verified = verify(&[path]).unwrap();
        assert!(verified.breaks[0].problem.starts_with("not a JSON record"));
    }
}
