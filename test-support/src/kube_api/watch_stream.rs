//! Streaming watches of the test API server.
//!
//! This module owns one watch response: the replay of changes after the
//! requested resourceVersion (or the current objects as `ADDED` without
//! one), then live changes from the broadcast, as newline-delimited JSON
//! watch events; bookmarks when idle (if asked for), `410 Expired` as an
//! `ERROR` event for a compacted resourceVersion, the server-side
//! `timeoutSeconds`, and cuts by [`super::KubeApiServer::drop_watches`].

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::{body::Frame, header, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::{
    http::{status_object, status_response, Body, Query, Shared},
    state::{LogEntry, WatchFilter},
};

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The state of one streaming watch.
struct WatchStream {
    shared: Arc<Shared>,
    filter: WatchFilter,
    replay: VecDeque<Bytes>,
    feed: Option<broadcast::Receiver<Arc<LogEntry>>>,
    seen_rv: u64,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    cut: watch::Receiver<u64>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.shared
            .open_watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WatchStream {
    fn bookmark(&self) -> Bytes {
        line(
            "BOOKMARK",
            &json!({
                "kind": self.filter.resource.kind(),
                "apiVersion": self.filter.resource.api_version(),
                "metadata": {"resourceVersion": self.seen_rv.to_string()},
            }),
        )
    }

    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        if let Some(l) = self.replay.pop_front() {
            return Some(Ok(Frame::data(l)));
        }
        let interval = self.shared.bookmark_interval;
        let feed = self.feed.as_mut()?;
        let idle = tokio::time::sleep(interval);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                _ = self.cut.changed() => {
                    // An error ends the response without its final chunk:
                    // the client sees the connection cut mid-stream.
                    return Some(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "watch cut by test")));
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
                _ = &mut idle, if self.bookmarks => return Some(Ok(Frame::data(self.bookmark()))),
                got = feed.recv() => match got {
                    Ok(entry) => {
                        if entry.rv <= self.seen_rv {
                            continue;
                        }
                        self.seen_rv = entry.rv;
                        if let Some(kind) = self.filter.event_type(&entry) {
                            return Some(Ok(Frame::data(line(kind, &entry.object))));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some(Err(std::io::Error::other("watch fell behind")));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

pub(crate) fn watch_response(
    shared: &Arc<Shared>,
    filter: WatchFilter,
    query: &Query,
) -> Response<Body> {
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let bookmarks = matches!(query.get("allowWatchBookmarks"), Some("true" | "1"));
    let requested: Option<u64> = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                return status_response(
                    400,
                    "BadRequest",
                    &format!("invalid resourceVersion {v:?}"),
                    None,
                )
            }
        },
    };
    let mut replay = VecDeque::new();
    let (feed, seen_rv) = {
        let state = shared.lock();
        match requested {
            Some(n) if n < state.compacted_below => {
                let status = status_object(
                    410,
                    "Expired",
                    &format!("too old resource version: {n} ({})", state.compacted_below),
                    None,
                );
                replay.push_back(line("ERROR", &status));
                (None, state.rv)
            }
            Some(n) => {
                for entry in state.since(n) {
                    if let Some(kind) = filter.event_type(&entry) {
                        replay.push_back(line(kind, &entry.object));
                    }
                }
                (Some(state.feed.subscribe()), state.rv)
            }
            None => {
                for obj in state.list(&filter) {
                    replay.push_back(line("ADDED", &obj));
                }
                (Some(state.feed.subscribe()), state.rv)
            }
        }
    };
    shared
        .open_watches
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let stream = WatchStream {
        shared: shared.clone(),
        filter,
        replay,
        feed,
        seen_rv,
        bookmarks,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        cut: shared.cut.subscribe(),
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((frame, s))
    });
    let mut resp = Response::new(StreamBody::new(body).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
