# The operator image: FROM scratch plus the statically linked operator binary (no registry is
# needed to build it). Build with scripts/build-operator-image.sh, which compiles the binary with
# a static C runtime and uses this file with a context holding only that binary.
FROM scratch
COPY worker-recovery-operator /usr/local/bin/worker-recovery-operator
ENTRYPOINT ["/usr/local/bin/worker-recovery-operator"]
CMD ["run", "--log-format", "json"]
