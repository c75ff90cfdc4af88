//! The remote-write 1.0 wire format: a protobuf `WriteRequest` (the messages
//! of Prometheus' `prompb/types.proto` and `remote.proto`, derived with
//! prost), compressed with snappy's block format.
//!
//! What it owns (no I/O): grouping samples into one `TimeSeries` per label
//! set, in timestamp order within each series, and the request body.

use std::collections::HashMap;

use super::convert::RwSample;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (samples only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// In timestamp order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Label name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Label value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Groups `samples` by series (first appearance order) with each series'
/// samples sorted by timestamp (stable: equal timestamps keep their order).
pub fn write_request(samples: &[RwSample]) -> WriteRequest {
    let mut index: HashMap<&[(String, String)], usize> = HashMap::new();
    let mut timeseries: Vec<TimeSeries> = Vec::new();
    for s in samples {
        let i = *index.entry(s.labels.as_slice()).or_insert_with(|| {
            timeseries.push(TimeSeries {
                labels: s
                    .labels
                    .iter()
                    .map(|(name, value)| Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples: Vec::new(),
            });
            timeseries.len() - 1
        });
        timeseries[i].samples.push(Sample {
            value: s.value,
            timestamp: s.timestamp_ms,
        });
    }
    for ts in &mut timeseries {
        ts.samples.sort_by_key(|s| s.timestamp);
    }
    WriteRequest { timeseries }
}

/// The HTTP body: the request, protobuf-encoded and snappy-compressed.
pub fn encode(request: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    let raw = prost::Message::encode_to_vec(request);
    snap::raw::Encoder::new().compress_vec(&raw)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn sample(name: &str, ts: i64, value: f64) -> RwSample {
        RwSample {
            labels: vec![
                ("__name__".into(), name.into()),
                ("cluster".into(), "c".into()),
            ],
            timestamp_ms: ts,
            value,
        }
    }

    #[test]
    fn groups_by_series_sorts_by_time_and_round_trips() {
        let samples = vec![
            sample("a", 30, 3.0),
            sample("b", 5, 1.0),
            sample("a", 10, 1.0),
            sample("a", 20, 2.0),
        ];
        let req = write_request(&samples);
        assert_eq!(req.timeseries.len(), 2);
        assert_eq!(req.timeseries[0].labels[0].value, "a");
        let ts: Vec<i64> = req.timeseries[0]
            .samples
            .iter()
            .map(|s| s.timestamp)
            .collect();
        assert_eq!(ts, vec![10, 20, 30]);
        let body = encode(&req).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(WriteRequest::decode(raw.as_slice()).unwrap(), req);
    }

    #[test]
    fn matches_the_protobuf_bytes_of_prompb() {
        // WriteRequest{timeseries:[{labels:[{__name__,"m"}], samples:[{1.0, 2}]}]}
        // encoded by hand from the .proto field numbers and wire types.
        let req = write_request(&[RwSample {
            labels: vec![("__name__".into(), "m".into())],
            timestamp_ms: 2,
            value: 1.0,
        }]);
        let mut expected = vec![0x0a, 28, 0x0a, 13, 0x0a, 8];
        expected.extend_from_slice(b"__name__");
        expected.extend_from_slice(&[0x12, 1, b'm']);
        // Sample: field 1 double (tag 0x09, 1.0 little-endian), field 2 varint (tag 0x10).
        expected.extend_from_slice(&[0x12, 11, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 2]);
        assert_eq!(req.encode_to_vec(), expected);
    }
}
