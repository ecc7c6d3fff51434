# The e2e guest's two NixOS systems, built by build-guest-disks.sh with real Nix (nix-build)
# but without nixpkgs: every derivation is `builder = "/bin/sh"` with the host's coreutils.
# They are laid out as NixOS lays out a system toplevel (init, kernel, initrd, kernel-params,
# nixos-version, system, specialisation/, bootspec boot.json), so that `nixboot image` takes
# system 1 as it takes a real one, and generation 2 can be added to the disk with
# `nix-store --import` and `nix-env --set` (rebuild-switch).
#
#   kernel    Debian's Xen-capable kernel file (/boot/vmlinuz-<kver>), added to the store as
#             is and copied to linux-<kver>/bzImage, where NixOS's kernel package has it.
#   initrd1/2 the busybox initrds made by build-guest-disks.sh (guest-init as /init; they
#             differ only in the name they report), each in initrd-linux-<kver>/initrd.
#   system N  kernelParams "console=hvc0 loglevel=4 nixboot.gen=N"; its init (stage 2, run
#             by guest-init from the guest's disk) prints NIXBOOT-E2E-STAGE2 and its toplevel.
{ kver, kernel, initrd1, initrd2 }:
let
  system = builtins.currentSystem;
  sh = "/bin/sh";
  PATH = "/usr/bin:/bin";
  # an absolute file name given with --argstr, added to the store under a fixed name
  file = name: p: builtins.path { path = /. + p; inherit name; };

  linux = derivation {
    name = "linux-${kver}";
    inherit system PATH;
    builder = sh;
    src = file "vmlinuz-${kver}" kernel;
    args = [ "-c" "mkdir $out && cp $src $out/bzImage" ];
  };

  initrd = n: src: derivation {
    name = "initrd-linux-${kver}";
    inherit system PATH;
    builder = sh;
    src = file "nixboot-e2e-initrd-${toString n}" src;
    args = [ "-c" "mkdir $out && cp $src $out/initrd" ];
  };

  toplevel = n: initrd: let
    out = builtins.placeholder "out";
    params = [ "console=hvc0" "loglevel=4" "nixboot.gen=${toString n}" ];
    version = "24.11.${toString n}";
  in derivation {
    name = "nixos-system-e2e-${version}";
    inherit system PATH;
    builder = sh;
    kernelParams = builtins.concatStringsSep " " params;
    inherit version;
    init = ''
      #!/bin/sh
      echo "NIXBOOT-E2E-STAGE2 generation=${toString n} toplevel=${out}"
    '';
    # bootspec v1, as NixOS 23.05+ writes it (nixboot reads it before the files above)
    bootJson = builtins.toJSON {
      "org.nixos.bootspec.v1" = {
        init = "${out}/init";
        initrd = "${initrd}/initrd";
        kernel = "${linux}/bzImage";
        kernelParams = params;
        label = "NixOS ${version} (Linux ${kver})";
        inherit system;
        toplevel = out;
      };
      "org.nixos.specialisation.v1" = { };
    };
    args = [ "-c" ''
      mkdir -p $out/specialisation
      printf '%s' "$init" > $out/init
      chmod 0555 $out/init
      ln -s ${linux}/bzImage $out/kernel
      ln -s ${initrd}/initrd $out/initrd
      printf '%s' "$kernelParams" > $out/kernel-params
      printf '%s' "$version" > $out/nixos-version
      printf '%s' "$system" > $out/system
      printf '%s\n' "$bootJson" > $out/boot.json
    '' ];
  };
in {
  system1 = toplevel 1 (initrd 1 initrd1);
  system2 = toplevel 2 (initrd 2 initrd2);
}
