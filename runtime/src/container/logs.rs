//! Container logs: stdout and stderr, line by line, in JSON lines like Docker's json-file
//! driver (`{"log":"…\n","stream":"stdout","time":"…"}`), with size-based rotation
//! (`container.log`, `container.log.1`, … up to `max_files`). The keeper writes them;
//! anyone reads them, following new lines and rotations.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::spec::LogConfig;

/// Docker splits lines longer than this into several entries.
pub const MAX_LINE: usize = 16 * 1024;
const FILE: &str = "container.log";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One log entry as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    /// The text, with its newline if it had one.
    pub log: String,
    pub stream: Stream,
    pub time: DateTime<Utc>,
}

impl LogEntry {
    /// The line as `docker logs --timestamps` prints it.
    pub fn render(&self, timestamps: bool) -> String {
        if timestamps {
            format!(
                "{} {}",
                self.time.to_rfc3339_opts(SecondsFormat::Nanos, true),
                self.log
            )
        } else {
            self.log.clone()
        }
    }
}

/// Appends entries to a container's log, rotating by size.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    cfg: LogConfig,
}

impl LogWriter {
    pub fn open(dir: &Path, cfg: LogConfig) -> io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(FILE))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            cfg,
        })
    }

    pub fn write(&mut self, stream: Stream, text: &[u8]) -> io::Result<()> {
        let entry = LogEntry {
            log: String::from_utf8_lossy(text).into_owned(),
            stream,
            time: Utc::now(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.cfg.max_files.max(1);
        let name = |i: u32| {
            if i == 0 {
                self.dir.join(FILE)
            } else {
                self.dir.join(format!("{FILE}.{i}"))
            }
        };
        if keep == 1 {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(name(keep - 1));
        for i in (0..keep - 1).rev() {
            if name(i).exists() {
                fs::rename(name(i), name(i + 1))?;
            }
        }
        self.file = OpenOptions::new().create(true).append(true).open(name(0))?;
        self.size = 0;
        Ok(())
    }
}

/// Splits a byte stream into lines for the log, holding a partial line until its end
/// arrives or it grows past [`MAX_LINE`].
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit` for each complete (or over-long) line.
    pub fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            emit(&self.buf[start..start + pos + 1]);
            start += pos + 1;
        }
        while self.buf.len() - start >= MAX_LINE {
            emit(&self.buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.buf.drain(..start);
    }

    /// Emits what is left (a last line with no newline).
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

/// What to read back.
#[derive(Clone, Debug)]
pub struct LogQuery {
    pub stdout: bool,
    pub stderr: bool,
    /// Only the last N entries (after stream filtering).
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            stdout: true,
            stderr: true,
            tail: None,
            since: None,
        }
    }
}

impl LogQuery {
    fn wants(&self, e: &LogEntry) -> bool {
        let s = match e.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        s && self.since.is_none_or(|t| e.time >= t)
    }
}

fn parse_lines(r: impl BufRead, q: &LogQuery, out: &mut Vec<LogEntry>) -> io::Result<u64> {
    let mut n = 0;
    for line in r.split(b'\n') {
        let line = line?;
        n += line.len() as u64 + 1;
        if let Ok(e) = serde_json::from_slice::<LogEntry>(&line) {
            if q.wants(&e) {
                out.push(e);
            }
        }
    }
    Ok(n)
}

/// The log files of `dir`, oldest first (`container.log` is last).
fn log_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == FILE {
            files.push((0, e.path()));
        } else if let Some(i) = name
            .strip_prefix(&format!("{FILE}."))
            .and_then(|i| i.parse().ok())
        {
            files.push((i, e.path()));
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(files.into_iter().map(|f| f.1).collect())
}

/// Reads the stored entries that match, oldest first. When `current` is given, the
/// newest file is read from that open handle instead, and the offset of the end of its
/// last complete line is returned, so a follower goes on from exactly there.
fn read_all(
    dir: &Path,
    q: &LogQuery,
    current: Option<&mut File>,
) -> io::Result<(Vec<LogEntry>, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for p in log_files(dir)? {
        if current.is_some() && p.file_name().is_some_and(|n| n == FILE) {
            continue;
        }
        match File::open(&p) {
            Ok(f) => {
                parse_lines(BufReader::new(f), q, &mut out)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // rotated away meanwhile
            Err(e) => return Err(e),
        }
    }
    if let Some(f) = current {
        f.seek(SeekFrom::Start(0))?;
        pos = complete_lines(f, q, &mut out)?;
    }
    if let Some(t) = q.tail {
        let skip = out.len().saturating_sub(t);
        out.drain(..skip);
    }
    Ok((out, pos))
}

/// Every stored entry that matches, oldest first.
pub fn read_logs(dir: &Path, q: &LogQuery) -> io::Result<Vec<LogEntry>> {
    read_all(dir, q, None).map(|(v, _)| v)
}

/// Reads what matches, then follows new entries (across rotations) until `done()` says
/// the writer has finished and nothing more is there. `emit` returning false stops early.
pub async fn follow_logs<F, Fut>(
    dir: &Path,
    q: &LogQuery,
    done: &(dyn Fn() -> bool + Sync),
    mut emit: F,
) -> io::Result<()>
where
    F: FnMut(LogEntry) -> Fut + Send,
    Fut: std::future::Future<Output = bool> + Send,
{
    let path = dir.join(FILE);
    // open the live file first and read it through that handle: no line written in
    // between is skipped or shown twice. A container that is prepared but not started
    // yet has no file: wait for it (a follower that starts on a new task as soon as the
    // task is prepared would else end before the task's first line)
    let mut f = loop {
        match File::open(&path) {
            Ok(f) => break f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() && !done() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (first, mut pos) = read_all(dir, q, Some(&mut f))?;
    for e in first {
        if !emit(e).await {
            return Ok(());
        }
    }
    let live = LogQuery {
        tail: None,
        ..q.clone()
    };
    loop {
        let finished = done();
        let mut batch = Vec::new();
        if f.metadata()?.len() < pos {
            pos = 0; // truncated in place (a single log file rotates that way)
        }
        f.seek(SeekFrom::Start(pos))?;
        pos += complete_lines(&mut f, &live, &mut batch)?;
        // rotated: finish the old file, then start on the new one from its beginning
        let rotated = fs::metadata(&path)
            .map(|m| m.ino() != f.metadata().map(|x| x.ino()).unwrap_or(0))
            .unwrap_or(false);
        if rotated {
            f.seek(SeekFrom::Start(pos))?;
            complete_lines(&mut f, &live, &mut batch)?;
            f = File::open(&path)?;
            pos = 0;
        }
        for e in batch {
            if !emit(e).await {
                return Ok(());
            }
        }
        if finished && !rotated {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses the complete lines from the current position; returns how many bytes it used
/// (a half-written last line is left for the next round).
fn complete_lines(f: &mut File, q: &LogQuery, out: &mut Vec<LogEntry>) -> io::Result<u64> {
    let mut buf = Vec::new();
    io::Read::read_to_end(f, &mut buf)?;
    let end = buf
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    parse_lines(&buf[..end], q, out)?;
    Ok(end as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_reads_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(
            d.path(),
            LogConfig {
                max_size: 400,
                max_files: 3,
            },
        )
        .unwrap();
        for i in 0..40 {
            let s = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            w.write(s, format!("line {i}\n").as_bytes()).unwrap();
        }
        let files = fs::read_dir(d.path()).unwrap().count();
        assert_eq!(files, 3, "at most max_files files");
        for f in fs::read_dir(d.path()).unwrap() {
            assert!(f.unwrap().metadata().unwrap().len() <= 400);
        }
        let all = read_logs(d.path(), &LogQuery::default()).unwrap();
        assert!(all.len() < 40, "the oldest entries were rotated away");
        assert_eq!(all.last().unwrap().log, "line 39\n");
        let nums: Vec<u32> = all
            .iter()
            .map(|e| e.log.trim().strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "oldest first, none missing in between: {nums:?}"
        );
        let errs = read_logs(
            d.path(),
            &LogQuery {
                stdout: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(errs
            .iter()
            .all(|e| e.stream == Stream::Stderr
                && e.log.trim_end().ends_with(['1', '3', '5', '7', '9'])));
        let tail = read_logs(
            d.path(),
            &LogQuery {
                tail: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            tail.iter().map(|e| e.log.as_str()).collect::<Vec<_>>(),
            ["line 38\n", "line 39\n"]
        );
        assert!(tail[1].render(true).contains("Z line 39"));
    }

    #[test]
    fn splits_lines_and_keeps_partials() {
        let mut s = LineSplitter::default();
        let mut got: Vec<Vec<u8>> = vec![];
        s.feed(b"a\nbc", &mut |l| got.push(l.to_vec()));
        s.feed(b"d\ne", &mut |l| got.push(l.to_vec()));
        s.feed(&vec![b'x'; MAX_LINE + 5], &mut |l| got.push(l.to_vec()));
        s.finish(&mut |l| got.push(l.to_vec()));
        assert_eq!(got[0], b"a\n");
        assert_eq!(got[1], b"bcd\n");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3].len(), 6);
    }

    #[tokio::test]
    async fn a_follower_waits_for_a_prepared_containers_first_line() {
        // the logs directory is made when the container is prepared; the file only
        // when it starts
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dir2 = dir.clone();
        let reader = tokio::spawn(async move {
            follow_logs(&dir2, &LogQuery::default(), &|| false, |e| {
                std::future::ready(tx.send(e.log).is_ok())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!reader.is_finished(), "it waits for the file");
        let mut w = LogWriter::open(&dir, LogConfig::default()).unwrap();
        w.write(Stream::Stdout, b"hello\n").unwrap();
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("follower stalled");
        assert_eq!(line.as_deref(), Some("hello\n"));
        reader.abort();
    }

    #[tokio::test]
    async fn follows_across_rotation() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let mut w = LogWriter::open(
            &dir,
            LogConfig {
                max_size: 300,
                max_files: 2,
            },
        )
        .unwrap();
        w.write(Stream::Stdout, b"first\n").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, dir2) = (stop.clone(), dir.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            follow_logs(
                &dir2,
                &LogQuery::default(),
                &|| stop2.load(std::sync::atomic::Ordering::SeqCst),
                |e| std::future::ready(tx.send(e.log).is_ok()),
            )
            .await
            .unwrap();
        });
        async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("follower stalled")
                .expect("follower ended")
        }
        assert_eq!(next(&mut rx).await, "first\n");
        // each line is written only once the follower has the previous one, so rotations
        // (every few lines here) never outrun it
        for i in 0..12 {
            w.write(Stream::Stdout, format!("more {i}\n").as_bytes())
                .unwrap();
            assert_eq!(next(&mut rx).await, format!("more {i}\n"));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.await.unwrap();
        assert!(rx.try_recv().is_err(), "no line twice");
    }
}
