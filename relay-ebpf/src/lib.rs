#![no_std]
// This file exists so relay-user can name relay-ebpf as a build-dependency
// (cache invalidation); the program itself is the `relay` binary.
