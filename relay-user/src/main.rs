fn main() {
    println!("{} bytes of eBPF", relay_user::EBPF_OBJECT.len());
}
