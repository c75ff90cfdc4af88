//! `frame_decoder` harness: the receiving side's whole decode path.
//!
//! Input layout: 4 configuration bytes, then the byte stream.
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | max frame: low nibble picks from [`MAX_FRAMES`], high nibble is added (0xff: `usize::MAX`, clamped by the decoder) |
//! | 1 | bits 0-4: `max_series` of the batch decoder; bits 5-7: chunking mode |
//! | 2 | chunking parameter |
//! | 3 | chunking seed |
//!
//! Checks:
//! * the frames (and the final error) are exactly those of a plain reference
//!   parser of the stream, whatever the chunking;
//! * after every push the decoder buffers at most `HEADER_LEN + max - 1 +
//!   chunk` bytes, `wanted()` never points past the current frame, and
//!   `has_frame()` agrees with `next_frame()`;
//! * every frame goes through `Message::decode`; decoded messages re-encode
//!   to something no longer than the frame that decodes to the same value;
//! * every batch body goes through one `BatchDecoder` (state kept across
//!   frames, stopped at its first error as the receiver does): the entry
//!   count matches, the interning table never exceeds `max_series`, and the
//!   entries re-encoded by a `BatchEncoder` decode (with a second decoder)
//!   to the same entries, bit for bit;
//! * every frame also goes through `RecordView::parse`, `decode_record` and
//!   `SeriesKey::decode`;
//! * the whole pipeline gives the same results under the fuzzed chunking as
//!   on the whole stream, and its peak heap stays proportional to the input.

use std::sync::Arc;

use telemetry_link::{
    proto::{
        batch::{BatchDecoder, BatchEncoder, Entry},
        frame::{FrameDecoder, FrameError, HEADER_LEN},
        message::{
            Message, MAX_REASON_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, REPLICA_VERSION,
        },
        record::{decode_record, encode_app_bytes, encode_sample_parts, RecordView},
        refused::MAX_REFUSED_PAIRS,
    },
    Sample, SeriesKey,
};

use crate::alloc::Measure;

/// Number of configuration bytes in front of the stream.
pub const CONFIG_LEN: usize = 4;

/// Max-frame choices (low nibble of byte 0).
pub const MAX_FRAMES: [usize; 16] = [
    0,
    1,
    2,
    4,
    8,
    16,
    31,
    64,
    100,
    255,
    256,
    1000,
    1024,
    4096,
    65536,
    1 << 20,
];

/// Chunking modes (bits 5-7 of byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Every chunk has the same size (`param + 1`).
    Fixed = 0,
    /// Sizes from a xorshift generator, `1..=param + 1`.
    Random = 1,
    /// One byte at a time.
    Bytes = 2,
    /// The whole stream in one push.
    Whole = 3,
    /// Exactly `wanted()`, as the network reader does, capped at `param + 1`.
    Wanted = 4,
    /// `wanted() + param`: reads that run into the next frame.
    WantedPlus = 5,
    /// Alternating tiny and large chunks.
    Alternate = 6,
    /// Sizes taken from the seed bytes, cycled.
    Seeded = 7,
}

/// Parsed configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Requested maximum frame body.
    pub max_frame: usize,
    /// Batch decoder's interning cap.
    pub max_series: u32,
    /// How the stream is cut.
    pub chunking: Chunking,
    /// Chunking parameter.
    pub param: u8,
    /// Chunking seed.
    pub seed: u8,
}

impl Config {
    /// The configuration bytes for these settings (for seeds).
    pub fn bytes(
        max_sel: u8,
        max_series: u8,
        chunking: Chunking,
        param: u8,
        seed: u8,
    ) -> [u8; CONFIG_LEN] {
        [
            max_sel,
            (max_series & 0x1f) | ((chunking as u8) << 5),
            param,
            seed,
        ]
    }

    fn parse(b: [u8; CONFIG_LEN]) -> Self {
        let max_frame = if b[0] == 0xff {
            usize::MAX
        } else {
            MAX_FRAMES[usize::from(b[0] & 0x0f)] + usize::from(b[0] >> 4)
        };
        let chunking = match b[1] >> 5 {
            0 => Chunking::Fixed,
            1 => Chunking::Random,
            2 => Chunking::Bytes,
            3 => Chunking::Whole,
            4 => Chunking::Wanted,
            5 => Chunking::WantedPlus,
            6 => Chunking::Alternate,
            _ => Chunking::Seeded,
        };
        Config {
            max_frame,
            max_series: u32::from(b[1] & 0x1f),
            chunking,
            param: b[2],
            seed: b[3],
        }
    }
}

/// Produces chunk lengths.
struct Chunker {
    mode: Chunking,
    param: usize,
    state: u32,
    n: usize,
    seed_bytes: [u8; 4],
}

impl Chunker {
    fn new(cfg: &Config, seed_bytes: [u8; 4]) -> Self {
        Chunker {
            mode: cfg.chunking,
            param: usize::from(cfg.param),
            state: 0x9e37_79b9 ^ (u32::from(cfg.seed) << 8 | u32::from(cfg.param)),
            n: 0,
            seed_bytes,
        }
    }

    fn next(&mut self, wanted: usize, left: usize) -> usize {
        self.n += 1;
        let n = match self.mode {
            Chunking::Fixed => self.param + 1,
            Chunking::Random => {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 17;
                self.state ^= self.state << 5;
                1 + (self.state as usize) % (self.param + 1)
            }
            Chunking::Bytes => 1,
            Chunking::Whole => left,
            Chunking::Wanted => wanted.min(self.param + 1),
            Chunking::WantedPlus => wanted + self.param,
            Chunking::Alternate => {
                if self.n.is_multiple_of(2) {
                    1
                } else {
                    (self.param + 1) * 7
                }
            }
            Chunking::Seeded => usize::from(self.seed_bytes[self.n % 4]) + 1,
        };
        n.clamp(1, left.max(1))
    }
}

/// How a stream ended, per the reference parser or the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Between frames.
    Clean,
    /// A header announced too much.
    TooLarge(u64),
    /// Inside a frame.
    Truncated(usize),
}

/// The obviously correct frame parser the decoder is compared with.
pub fn reference_frames(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (frames, End::Clean);
        }
        if rest.len() < HEADER_LEN {
            return (frames, End::Truncated(rest.len()));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len as usize > max {
            return (frames, End::TooLarge(u64::from(len)));
        }
        let len = len as usize;
        if rest.len() < HEADER_LEN + len {
            return (frames, End::Truncated(rest.len()));
        }
        frames.push(&rest[HEADER_LEN..HEADER_LEN + len]);
        rest = &rest[HEADER_LEN + len..];
    }
}

/// A compact account of what the pipeline did with each frame, compared
/// between the chunked run and the whole-stream run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digest {
    /// Per frame: message type (0 for a decode error) and, for batches,
    /// entries decoded (`u32::MAX` for a batch error, `u32::MAX - 1` when
    /// skipped after an earlier batch error).
    pub events: Vec<(u8, u32)>,
    /// Interned series at the end.
    pub interned: usize,
}

/// Receiver-side pipeline state shared by both runs.
struct Pipeline {
    batch: BatchDecoder,
    batch_failed: bool,
    max_series: u32,
}

impl Pipeline {
    fn new(max_series: u32) -> Self {
        Pipeline {
            batch: BatchDecoder::new(max_series),
            batch_failed: false,
            max_series,
        }
    }

    /// Decodes one frame; returns its digest event. A batch's entries are
    /// left in `entries`.
    fn frame<'a>(&mut self, frame: &'a [u8], entries: &mut Vec<Entry<'a>>) -> (u8, u32) {
        entries.clear();
        match Message::decode(frame) {
            Err(_) => (0, 0),
            Ok(Message::Batch(b)) => {
                if self.batch_failed {
                    return (4, u32::MAX - 1);
                }
                let before = self.batch.interned();
                match self.batch.decode(b.body, b.count, entries) {
                    Ok(()) => {
                        assert_eq!(
                            entries.len() as u64,
                            u64::from(b.count),
                            "batch entry count"
                        );
                        let after = self.batch.interned();
                        assert!(after >= before, "interning table shrank");
                        assert!(
                            after as u64 <= u64::from(self.max_series),
                            "interned {after} > max_series {}",
                            self.max_series
                        );
                        (4, b.count)
                    }
                    Err(_) => {
                        self.batch_failed = true;
                        entries.clear();
                        (4, u32::MAX)
                    }
                }
            }
            Ok(m) => (m.message_type() as u8, 0),
        }
    }
}

/// Runs the harness on one input (known-bug checks per [`crate::strict`]).
pub fn run(data: &[u8]) {
    run_with(data, crate::strict())
}

/// Runs the harness; `known_bugs` enables the checks for reported open bugs.
pub fn run_with(data: &[u8], known_bugs: bool) {
    if data.len() < CONFIG_LEN {
        return;
    }
    let (head, stream) = data.split_at(CONFIG_LEN);
    let head: [u8; CONFIG_LEN] = [head[0], head[1], head[2], head[3]];
    let cfg = Config::parse(head);
    let seed_bytes = head;

    let probe = FrameDecoder::new(cfg.max_frame);
    let max = probe.max_frame();
    drop(probe);
    let (ref_frames, ref_end) = reference_frames(stream, max);

    // --- Pass 1: fuzzed chunking, measured heap, cheap checks only. ---
    let mut digest = Digest {
        events: Vec::with_capacity(ref_frames.len() + 1),
        interned: 0,
    };
    let measure = Measure::start();
    let end = {
        let mut d = FrameDecoder::new(cfg.max_frame);
        assert_eq!(d.max_frame(), max);
        let mut pipe = Pipeline::new(cfg.max_series);
        let mut chunker = Chunker::new(&cfg, seed_bytes);
        let mut pos = 0usize;
        let mut k = 0usize;
        let end = 'outer: loop {
            loop {
                let has = d.has_frame();
                match d.next_frame() {
                    Ok(Some(f)) => {
                        assert_eq!(has, Ok(true), "has_frame disagrees with next_frame");
                        assert!(f.len() <= max, "frame of {} bytes above max {max}", f.len());
                        assert!(
                            k < ref_frames.len(),
                            "decoder produced more frames than the reference"
                        );
                        assert!(f == ref_frames[k], "frame {k} differs from the reference");
                        k += 1;
                        let mut entries = Vec::new();
                        digest.events.push(pipe.frame(f, &mut entries));
                    }
                    Ok(None) => {
                        assert_eq!(has, Ok(false), "has_frame disagrees with next_frame");
                        break;
                    }
                    Err(e) => {
                        assert!(has.is_err(), "has_frame Ok but next_frame Err");
                        break 'outer end_of(e);
                    }
                }
            }
            // Nothing complete is buffered, and the header (if any) is fine.
            let buffered = d.buffered();
            assert!(
                buffered < HEADER_LEN + max,
                "{buffered} bytes buffered without a complete frame (max {max})"
            );
            let wanted = d.wanted();
            assert!(wanted >= 1, "wanted() is zero");
            assert!(
                buffered + wanted <= HEADER_LEN + max,
                "wanted() {wanted} runs past the current frame ({buffered} buffered, max {max})"
            );
            if pos == stream.len() {
                break match d.finish() {
                    Ok(()) => End::Clean,
                    Err(e) => end_of(e),
                };
            }
            let n = chunker.next(wanted, stream.len() - pos);
            let res = d.push(&stream[pos..pos + n]);
            pos += n;
            assert!(
                d.buffered() < HEADER_LEN + max + n,
                "decoder buffers {} bytes after a push of {n} (max frame {max})",
                d.buffered()
            );
            if let Err(e) = res {
                break end_of(e);
            }
        };
        assert_eq!(
            k,
            ref_frames.len(),
            "frame count differs from the reference"
        );
        digest.interned = pipe.batch.interned();
        end
    };
    let peak = measure.peak();
    let bound = 64 * stream.len() + 64 * 1024;
    assert!(
        peak <= bound,
        "peak heap {peak} bytes for a {}-byte stream (bound {bound})",
        stream.len()
    );
    assert_eq!(end, ref_end, "end of stream differs from the reference");

    // --- Pass 2: the reference frames, full checks. ---
    let mut pipe = Pipeline::new(cfg.max_series);
    let mut shadow_enc = BatchEncoder::new(cfg.max_series);
    let mut shadow_dec = BatchDecoder::new(cfg.max_series);
    let mut events = Vec::with_capacity(ref_frames.len());
    let mut entries = Vec::new();
    for f in &ref_frames {
        let ev = pipe.frame(f, &mut entries);
        events.push(ev);
        check_message(f);
        check_record_views(f, known_bugs);
        if ev.0 == 4 && ev.1 < u32::MAX - 1 {
            check_entries(&entries, &mut shadow_enc, &mut shadow_dec, known_bugs);
        }
    }
    assert_eq!(
        events, digest.events,
        "chunked and whole-stream pipelines disagree"
    );
    assert_eq!(
        pipe.batch.interned(),
        digest.interned,
        "interning differs between runs"
    );
}

fn end_of(e: FrameError) -> End {
    match e {
        FrameError::TooLarge { announced, .. } => End::TooLarge(announced),
        FrameError::Truncated { buffered } => End::Truncated(buffered),
    }
}

/// A decoded message re-encodes to at most the frame's size and decodes to
/// the same value.
fn check_message(frame: &[u8]) {
    let Ok(m) = Message::decode(frame) else {
        return;
    };
    match &m {
        Message::Hello(h) => {
            assert!((MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.version));
            assert!(
                h.version >= REPLICA_VERSION || h.replica.is_empty(),
                "a replica in a version-{} hello",
                h.version
            );
        }
        Message::Refused(r) => {
            // Bounded list on the wire; decoded into fixed counts.
            assert!(r.counts.iter().count() <= MAX_REFUSED_PAIRS);
        }
        Message::Refuse(r) => assert!(r.reason.len() <= MAX_REASON_LEN),
        Message::Present(p) => {
            // A part the assembler accepts holds exactly `count` records
            // that stay inside the body.
            let mut assembler = telemetry_link::proto::present::PresentAssembler::new(1 << 16);
            if let Ok(Some(done)) = assembler.push(p) {
                assert_eq!(done.count, u64::from(p.count), "present record count");
                for record in telemetry_link::proto::present::records(&done.body) {
                    let bytes = record.expect("an accepted present body is well-formed");
                    let _ = decode_record::<Sample>(bytes);
                }
            }
        }
        _ => {}
    }
    let again = m.to_vec();
    assert!(
        again.len() <= frame.len(),
        "re-encoding grew: {} > {}",
        again.len(),
        frame.len()
    );
    assert_eq!(
        Message::decode(&again).as_ref(),
        Ok(&m),
        "re-encoded message decodes differently"
    );
}

/// Envelope and series parsers on arbitrary bytes.
fn check_record_views(bytes: &[u8], known_bugs: bool) {
    let _ = RecordView::parse(bytes);
    let _ = decode_record::<Sample>(bytes);
    let _ = decode_record::<String>(bytes);
    let _ = decode_record::<u64>(bytes);
    let _ = decode_record::<Vec<u8>>(bytes);
    check_series(bytes, known_bugs);
}

/// A series key that decodes is valid and canonical.
pub fn check_series(bytes: &[u8], known_bugs: bool) {
    let Ok(k) = SeriesKey::decode(bytes) else {
        return;
    };
    assert!(!k.name().is_empty());
    assert!(
        k.labels().windows(2).all(|w| w[0].0 < w[1].0),
        "labels not sorted/unique"
    );
    let rebuilt = SeriesKey::new(k.name(), k.labels().iter().cloned())
        .expect("a decoded series key must be constructible");
    assert_eq!(rebuilt.name(), k.name());
    assert_eq!(rebuilt.labels(), k.labels());
    if known_bugs {
        // KNOWN BUG (fuzz/README.md, "Findings", F6): `SeriesKey::decode`
        // accepts trailing bytes and over-long varints, so one series has
        // several accepted spellings.
        assert_eq!(
            rebuilt.encoded(),
            k.encoded(),
            "SeriesKey::decode accepted a non-canonical encoding of {k:?}"
        );
        assert_eq!(rebuilt, k, "two spellings of one series compare unequal");
    }
}

/// Re-encodes decoded entries (those not refused) with a
/// fresh-per-connection encoder and checks a second decoder returns the
/// same entries, bit for bit.
fn check_entries(
    entries: &[Entry<'_>],
    enc: &mut BatchEncoder,
    dec: &mut BatchDecoder,
    known_bugs: bool,
) {
    // Nothing to re-encode of a refused entry: its series was not interned.
    let kept: Vec<&Entry<'_>> = entries
        .iter()
        .filter(|e| !matches!(e, Entry::Refused(_)))
        .collect();
    let mut body = Vec::new();
    let mut env = Vec::new();
    for e in &kept {
        env.clear();
        match e {
            Entry::App(b) => {
                encode_app_bytes(b, &mut env);
                let _ = decode_record::<String>(&env);
                let _ = decode_record::<u64>(&env);
            }
            Entry::Sample {
                series,
                timestamp_ms,
                value,
            } => {
                check_series(series.encoded(), known_bugs);
                encode_sample_parts(*timestamp_ms, *value, series.encoded(), &mut env);
                let s = decode_record::<Sample>(&env).expect("a decoded sample's envelope decodes");
                assert_eq!(s.timestamp_ms, *timestamp_ms);
                assert_eq!(s.value.to_bits(), value.to_bits());
            }
            Entry::Refused(_) => unreachable!("filtered out"),
        }
        enc.push_record(&env, &mut body)
            .expect("the encoder takes a valid envelope");
    }
    let mut back = Vec::new();
    dec.decode(&body, kept.len() as u32, &mut back)
        .unwrap_or_else(|e| panic!("re-encoded batch does not decode: {e}"));
    assert_eq!(back.len(), kept.len());
    for (a, b) in kept.iter().zip(&back) {
        assert!(same_entry(a, b), "re-encoded entry differs: {a:?} vs {b:?}");
    }
}

/// Entry equality with bit-exact values.
pub fn same_entry(a: &Entry<'_>, b: &Entry<'_>) -> bool {
    match (a, b) {
        (Entry::App(x), Entry::App(y)) => x == y,
        (
            Entry::Sample {
                series: s1,
                timestamp_ms: t1,
                value: v1,
            },
            Entry::Sample {
                series: s2,
                timestamp_ms: t2,
                value: v2,
            },
        ) => same_series(s1, s2) && t1 == t2 && v1.to_bits() == v2.to_bits(),
        (Entry::Refused(a), Entry::Refused(b)) => a == b,
        _ => false,
    }
}

fn same_series(a: &Arc<SeriesKey>, b: &Arc<SeriesKey>) -> bool {
    a.name() == b.name() && a.labels() == b.labels()
}
