# A NixOS-shaped system with a realistic closure, built from the host's
# /usr without nixpkgs (for image-bench.sh): one store path per entry of
# /usr/share, plus /usr/lib/x86_64-linux-gnu, /usr/bin and /usr/include —
# about 2.3 GiB in ~130 paths and ~42,000 files on Debian 12.
# /usr/share/man is left out: Debian keeps 18,000 pages in one flat man1
# directory, unlike any NixOS store path, and `mke2fs -d` inserts
# directory entries linearly (quadratic in a directory's size), which
# alone costs it ~30 s of CPU. Needs
# sandbox = false (Debian's default) so builders can read /usr.
# Arguments: kernelFile (a file to use as the kernel).
{ kernelFile }:
let
  sh = "/bin/sh";
  PATH = "/usr/bin:/bin";
  system = builtins.currentSystem;
  copyOf = name: src: derivation {
    inherit system PATH; name = "usr-${name}"; builder = sh;
    # Unreadable files (the builder is a nixbld user) are skipped.
    args = [ "-c" "mkdir $out && cp -r ${src} $out/ 2>/dev/null; true" ];
  };
  valid = n: builtins.match "[A-Za-z0-9+._=-]+" n != null && n != "man";
  shares = builtins.filter valid (builtins.attrNames (builtins.readDir /usr/share));
  parts = map (n: copyOf "share-${n}" "/usr/share/${n}") shares
    ++ [ (copyOf "lib" "/usr/lib/x86_64-linux-gnu") (copyOf "bin" "/usr/bin") (copyOf "include" "/usr/include") ];
  kernel = derivation { name = "linux-6.6.1"; inherit system PATH; builder = sh;
    args = [ "-c" "mkdir $out && cp ${kernelFile} $out/bzImage" ]; };
  initrd = derivation { name = "initrd-linux-6.6.1"; inherit system PATH; builder = sh;
    args = [ "-c" "mkdir $out && printf 'bench initrd\\n' > $out/initrd" ]; };
  sw = derivation { name = "system-path"; inherit system PATH; builder = sh;
    args = [ "-c" "mkdir $out && ${builtins.concatStringsSep " && " (map (p: "ln -s ${p} $out/") parts)}" ]; };
in derivation {
  name = "nixos-system-bench-24.11.20240101.abcdef0"; inherit system PATH; builder = sh;
  args = [ "-c" ''
    mkdir $out
    printf '24.11.20240101.abcdef0' > $out/nixos-version
    printf 'console=hvc0 loglevel=4' > $out/kernel-params
    ln -s ${kernel}/bzImage $out/kernel
    ln -s ${initrd}/initrd $out/initrd
    ln -s ${sw} $out/sw
    printf '#!/bin/sh\n# ${initrd}\n' > $out/init
    chmod +x $out/init
  '' ];
}
