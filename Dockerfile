# syntax=docker/dockerfile:1
# The kosli-operator image: built with the `dist` profile (the release profile
# with fat LTO, one codegen unit and symbols stripped: 15 MB instead of 27 MB,
# see Cargo.toml), then copied onto a distroless, non-root runtime with no
# shell. The binary needs only glibc and CA certificates (both in the base).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin kosli-operator \
 && install -m 0755 target/dist/kosli-operator /kosli-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kosli-operator /usr/local/bin/kosli-operator
# glibc's allocator asks for transparent huge pages for the heap (where the
# node allows them on request: THP "madvise" or "always"). A report walks
# every pod record and name, scattered over tens of megabytes at 150,000 pods:
# on 4 KiB pages most of those reads miss the TLB as well as the cache
# (docs/performance.md has the figures).
ENV GLIBC_TUNABLES=glibc.malloc.hugetlb=1
# distroless "nonroot": uid/gid 65532; the chart also runs it read-only.
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/kosli-operator"]
CMD ["run"]
