//! A ksqlDB-compatible server (protocol of ksqlDB 0.29) for the tests, the benchmarks and the
//! demo. It is a test double: nothing in the client special-cases it.
