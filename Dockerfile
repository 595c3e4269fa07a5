# ksql-lake: a small, non-root runtime image.
#   docker build -t ksql-lake .
#   docker run -v $PWD/ksql-lake.toml:/etc/ksql-lake/ksql-lake.toml:ro -p 9464:9464 ksql-lake
# The config comes from the mounted file; secrets from the environment
# (KSQL_LAKE_KSQLDB__PASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin ksql-lake \
    && strip target/release/ksql-lake

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ksql-lake /usr/local/bin/ksql-lake
# distroless's "nonroot" numbers: no shell login, no home to write to
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/ksql-lake"]
CMD ["run", "--config", "/etc/ksql-lake/ksql-lake.toml"]
