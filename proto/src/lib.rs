//! shoal-proto
