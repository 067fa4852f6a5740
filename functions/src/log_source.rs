//! Where `GET /logs/` reads recent log lines.
//!
//! MONAI Label serves its own `app.log`. A local server does the same from the lines it
//! keeps in memory ([`crate::logging::LogBuffer`]). In the cloud a Lambda instance's
//! memory holds only the lines of the requests that instance served, so the logs
//! function reads the deployment's CloudWatch log groups instead (every function's and
//! the runner's, named by `MEDLABEL_LOG_GROUPS`): the most recently written streams of
//! each group, their newest events, merged by time. It is bounded: at most
//! [`MAX_LINES`] lines from at most [`STREAMS_PER_GROUP`] streams per group, so one
//! request costs a few API calls however long the deployment has run.

use crate::error::ApiError;
use crate::logging::{KEPT_LINES, LogBuffer};

/// Most lines one `/logs/` answer holds (`lines=0`, "all", included).
pub const MAX_LINES: usize = KEPT_LINES;

/// Streams read per log group: Lambda writes one stream per instance, so the most
/// recent few hold the recent lines.
pub const STREAMS_PER_GROUP: i32 = 5;

/// A source of recent log lines.
#[derive(Debug, Clone)]
pub enum LogSource {
    /// This process's own lines.
    Process(LogBuffer),
    /// The deployment's CloudWatch log groups.
    #[cfg(feature = "aws")]
    CloudWatch(cloudwatch::CloudWatchTail),
}

impl LogSource {
    /// The last `lines` lines, oldest first (`0`: as many as [`MAX_LINES`]).
    pub async fn tail(&self, lines: usize) -> Result<Vec<String>, ApiError> {
        let lines = if lines == 0 {
            MAX_LINES
        } else {
            lines.min(MAX_LINES)
        };
        match self {
            LogSource::Process(buffer) => Ok(buffer.tail(lines)),
            #[cfg(feature = "aws")]
            LogSource::CloudWatch(tail) => tail.tail(lines).await,
        }
    }
}

#[cfg(feature = "aws")]
pub mod cloudwatch {
    //! The tail of CloudWatch log groups.

    use aws_sdk_cloudwatchlogs::Client;
    use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, SdkError};
    use aws_sdk_cloudwatchlogs::types::OrderBy;

    use super::STREAMS_PER_GROUP;
    use crate::error::ApiError;

    /// The newest lines of a set of log groups.
    #[derive(Debug, Clone)]
    pub struct CloudWatchTail {
        client: Client,
        groups: Vec<String>,
    }

    /// One log line with where and when it was written.
    struct Line {
        timestamp: i64,
        group: usize,
        text: String,
    }

    impl CloudWatchTail {
        pub fn new(client: Client, groups: Vec<String>) -> Self {
            Self { client, groups }
        }

        /// The groups named in `MEDLABEL_LOG_GROUPS` (comma-separated).
        pub fn groups_from_env() -> Vec<String> {
            std::env::var("MEDLABEL_LOG_GROUPS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect()
        }

        /// The last `lines` lines across the groups, oldest first, each prefixed with
        /// its group's last path segment (which function or runner wrote it).
        pub async fn tail(&self, lines: usize) -> Result<Vec<String>, ApiError> {
            let reads = self
                .groups
                .iter()
                .enumerate()
                .map(|(n, group)| self.group_tail(n, group, lines));
            let mut all: Vec<Line> = futures::future::try_join_all(reads)
                .await?
                .into_iter()
                .flatten()
                .collect();
            all.sort_by_key(|line| line.timestamp);
            let skip = all.len().saturating_sub(lines);
            Ok(all
                .into_iter()
                .skip(skip)
                .map(|line| {
                    let group = &self.groups[line.group];
                    let short = group.rsplit('/').next().unwrap_or(group);
                    format!("[{short}] {}", line.text)
                })
                .collect())
        }

        /// The newest `lines` events of each of the group's most recent streams; none
        /// for a group that does not exist (yet: the runner's, before a runner ran).
        async fn group_tail(
            &self,
            index: usize,
            group: &str,
            lines: usize,
        ) -> Result<Vec<Line>, ApiError> {
            let streams = match self
                .client
                .describe_log_streams()
                .log_group_name(group)
                .order_by(OrderBy::LastEventTime)
                .descending(true)
                .limit(STREAMS_PER_GROUP)
                .send()
                .await
            {
                Ok(streams) => streams.log_streams.unwrap_or_default(),
                Err(SdkError::ServiceError(err)) if err.err().is_resource_not_found_exception() => {
                    return Ok(Vec::new());
                }
                Err(err) => return Err(unavailable(group, err)),
            };
            let mut found = Vec::new();
            for stream in streams {
                let Some(name) = stream.log_stream_name() else {
                    continue;
                };
                let events = self
                    .client
                    .get_log_events()
                    .log_group_name(group)
                    .log_stream_name(name)
                    .start_from_head(false)
                    .limit(i32::try_from(lines).unwrap_or(i32::MAX))
                    .send()
                    .await
                    .map_err(|err| unavailable(group, err))?;
                found.extend(
                    events
                        .events
                        .unwrap_or_default()
                        .into_iter()
                        .map(|event| Line {
                            timestamp: event.timestamp.unwrap_or_default(),
                            group: index,
                            text: event.message.unwrap_or_default().trim_end().to_owned(),
                        }),
                );
            }
            Ok(found)
        }
    }

    fn unavailable(group: &str, err: impl std::error::Error) -> ApiError {
        ApiError::BadGateway(format!(
            "cannot read the log group {group}: {}",
            DisplayErrorContext(err)
        ))
    }
}
