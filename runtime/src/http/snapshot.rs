//! Rendered pages shared between the requests that ask for them at about
//! the same time, and the response body that serves them without copying.
//!
//! What it guarantees:
//! - Per page kind (`/metrics` in each text format, the status page) at
//!   most one render runs at a time. A request that arrives while one runs
//!   waits for it and gets its result. All of them share one buffer
//!   ([`Bytes`] is a reference-counted buffer): four scrapers cost one
//!   page, not four.
//! - A later request gets the last render while it is fresh: younger than
//!   `max_age`, and, for an exporter that reports a
//!   [`revision`](Exporter::revision), rendered at the revision it reports
//!   now. A changed state is therefore on the next page at once, except
//!   that a page is kept for [`RENDER_SPACING`] times its own render time
//!   (so rendering each page kind takes at most about a tenth of a core
//!   however often clients ask): a 1,000-series page is current within a
//!   millisecond or two, a 100,000-series page (≈ 16 ms to render) within
//!   ≈ 160 ms.
//! - Rendering runs on the blocking pool and holds the exporter's locks
//!   only while it writes into its buffer; writing to sockets happens after,
//!   from the shared buffer, so a slow client never holds the ingestion
//!   path. A render started for a request that went away still completes
//!   and is kept for the next one.
//! - [`SharedBody`] hands the buffer to the connection in
//!   [`CHUNK_BYTES`] slices of the same allocation, so a connection that
//!   does not read holds a reference, never a copy.
//! - Memory: the last page of each kind is kept (it also sizes the next
//!   buffer) and is dropped before a new render starts, so pages alive at
//!   once are the newest of each kind plus the older ones that connections
//!   still write — a bounded number, since connections are capped and a
//!   client that stops reading is closed after the write timeout.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Mutex;

use super::Exporter;
use crate::exposition::Format;

/// Bytes per body frame.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// What a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// `/metrics` in the Prometheus text format.
    Prometheus,
    /// `/metrics` in OpenMetrics.
    OpenMetrics,
    /// `/`.
    Status,
}

impl PageKind {
    fn index(self) -> usize {
        match self {
            PageKind::Prometheus => 0,
            PageKind::OpenMetrics => 1,
            PageKind::Status => 2,
        }
    }

    pub(crate) fn metrics(format: Format) -> Self {
        match format {
            Format::Prometheus => PageKind::Prometheus,
            Format::OpenMetrics => PageKind::OpenMetrics,
        }
    }
}

/// A changed page is rendered again no sooner than this many times its
/// last render time after that render ended.
pub(crate) const RENDER_SPACING: u32 = 10;

/// The last render of one page kind.
#[derive(Debug)]
struct Rendered {
    /// When the render ended.
    at: Instant,
    /// How long it took.
    took: Duration,
    /// The exporter's revision when the render began.
    revision: Option<u64>,
    page: Bytes,
}

impl Rendered {
    /// Whether a request at `revision` may get this page.
    fn fresh(&self, revision: Option<u64>, max_age: Duration) -> bool {
        let age = self.at.elapsed();
        if age > max_age {
            return false;
        }
        revision == self.revision || age < self.took.saturating_mul(RENDER_SPACING)
    }
}

#[derive(Debug, Default)]
struct Slot {
    last: Option<Rendered>,
    last_len: usize,
}

/// The shared pages of one endpoint.
#[derive(Debug)]
pub(crate) struct Snapshots {
    slots: [Arc<Mutex<Slot>>; 3],
    max_age: Duration,
}

/// The render task failed (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("rendering the page failed")]
pub(crate) struct RenderFailed;

impl Snapshots {
    pub(crate) fn new(max_age: Duration) -> Self {
        Self {
            slots: Default::default(),
            max_age,
        }
    }

    /// The page of `kind`: shared when fresh or being rendered, else rendered now.
    pub(crate) async fn get(
        &self,
        kind: PageKind,
        exporter: &Arc<dyn Exporter>,
    ) -> Result<Bytes, RenderFailed> {
        let mut slot = self.slots[kind.index()].clone().lock_owned().await;
        let revision = exporter.revision();
        if let Some(last) = &slot.last {
            if last.fresh(revision, self.max_age) {
                return Ok(last.page.clone());
            }
        }
        slot.last = None;
        let exporter = exporter.clone();
        // Spawned, so that the render completes and is kept even if this
        // request goes away.
        let render = tokio::spawn(async move {
            let hint = slot.last_len + slot.last_len / 8;
            let began = Instant::now();
            let page = tokio::task::spawn_blocking(move || {
                let mut out = String::with_capacity(hint);
                match kind {
                    PageKind::Prometheus => exporter.render(Format::Prometheus, &mut out),
                    PageKind::OpenMetrics => exporter.render(Format::OpenMetrics, &mut out),
                    PageKind::Status => exporter.render_status(&mut out),
                }
                Bytes::from(out)
            })
            .await
            .map_err(|_| RenderFailed)?;
            slot.last_len = page.len();
            let at = Instant::now();
            slot.last = Some(Rendered {
                at,
                took: at.duration_since(began),
                revision,
                page: page.clone(),
            });
            Ok(page)
        });
        render.await.map_err(|_| RenderFailed)?
    }
}

/// A response body serving a shared buffer in slices.
#[derive(Debug, Default)]
pub(crate) struct SharedBody {
    rest: Bytes,
}

impl SharedBody {
    pub(crate) fn new(bytes: impl Into<Bytes>) -> Self {
        Self { rest: bytes.into() }
    }
}

impl Body for SharedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(CHUNK_BYTES);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    struct Counting {
        renders: AtomicUsize,
    }

    impl Exporter for Counting {
        fn render(&self, _format: Format, out: &mut String) {
            let n = self.renders.fetch_add(1, Ordering::SeqCst);
            // Long enough for concurrent requests to pile up.
            std::thread::sleep(Duration::from_millis(100));
            out.push_str(&format!("render {n}\n"));
        }

        fn ready(&self) -> Result<(), String> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_render_and_stale_ones_render_again() {
        let counting = Arc::new(Counting {
            renders: AtomicUsize::new(0),
        });
        let exporter: Arc<dyn Exporter> = counting.clone();
        let snapshots = Arc::new(Snapshots::new(Duration::from_millis(300)));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (snapshots, exporter) = (snapshots.clone(), exporter.clone());
            tasks.push(tokio::spawn(async move {
                snapshots.get(PageKind::Prometheus, &exporter).await
            }));
        }
        let mut pages = Vec::new();
        for task in tasks {
            pages.push(task.await.unwrap().unwrap());
        }
        assert_eq!(counting.renders.load(Ordering::SeqCst), 1);
        assert!(pages
            .windows(2)
            .all(|w| w[0].as_ptr() == w[1].as_ptr() && w[0] == w[1]));
        // Another format is another page.
        snapshots
            .get(PageKind::OpenMetrics, &exporter)
            .await
            .unwrap();
        assert_eq!(counting.renders.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let fresh = snapshots
            .get(PageKind::Prometheus, &exporter)
            .await
            .unwrap();
        assert_eq!(&fresh[..], b"render 2\n");
    }

    /// Renders its revision; each render takes at least 50 ms.
    struct Revisioned {
        revision: AtomicU64,
        renders: AtomicUsize,
    }

    impl Exporter for Revisioned {
        fn render(&self, _format: Format, out: &mut String) {
            self.renders.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            out.push_str(&format!(
                "revision {}\n",
                self.revision.load(Ordering::SeqCst)
            ));
        }

        fn ready(&self) -> Result<(), String> {
            Ok(())
        }

        fn revision(&self) -> Option<u64> {
            Some(self.revision.load(Ordering::SeqCst))
        }
    }

    #[tokio::test]
    async fn a_changed_revision_is_rendered_again_after_the_render_spacing() {
        let revisioned = Arc::new(Revisioned {
            revision: AtomicU64::new(0),
            renders: AtomicUsize::new(0),
        });
        let exporter: Arc<dyn Exporter> = revisioned.clone();
        // An age far beyond the test, so only the revision can renew a page.
        let snapshots = Snapshots::new(Duration::from_secs(60));
        let get = || snapshots.get(PageKind::Prometheus, &exporter);
        let started = Instant::now();
        assert_eq!(&get().await.unwrap()[..], b"revision 0\n");
        assert_eq!(&get().await.unwrap()[..], b"revision 0\n");
        assert_eq!(
            revisioned.renders.load(Ordering::SeqCst),
            1,
            "same revision: shared"
        );

        revisioned.revision.store(1, Ordering::SeqCst);
        // Within ten render times (≥ 500 ms) the last page is still served.
        assert_eq!(&get().await.unwrap()[..], b"revision 0\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if &get().await.unwrap()[..] == b"revision 1\n" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the changed state never rendered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first render (≥ 50 ms), the spacing after it (≥ ten times
        // that), the second render.
        assert!(
            started.elapsed() >= Duration::from_millis(50) * (RENDER_SPACING + 1),
            "rendered again before the spacing: {:?}",
            started.elapsed()
        );
        assert_eq!(revisioned.renders.load(Ordering::SeqCst), 2);
        assert_eq!(&get().await.unwrap()[..], b"revision 1\n");
        assert_eq!(revisioned.renders.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_body_is_sliced_from_the_shared_buffer() {
        let page = Bytes::from(vec![7u8; CHUNK_BYTES * 2 + 10]);
        let mut body = SharedBody::new(page.clone());
        assert_eq!(body.size_hint().exact(), Some(page.len() as u64));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut lens = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            let data = frame.into_data().unwrap();
            assert!(page.as_ptr_range().contains(&data.as_ptr()), "not a copy");
            lens.push(data.len());
        }
        assert_eq!(lens, vec![CHUNK_BYTES, CHUNK_BYTES, 10]);
        assert!(body.is_end_stream());
    }
}
