# nixboot for dom0, built with nixpkgs' Rust tooling:
#
#   nix-build xen/nix            # ./result/bin/nixboot
#
# or, on a NixOS dom0, `environment.systemPackages = [
# (pkgs.callPackage ./xen/nix/package.nix { }) ];` (see dom0.nix). Needs
# a nixpkgs whose rustc is at least the rust-version in Cargo.toml (1.88).
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
}:

let
  manifest = (lib.importTOML ../../Cargo.toml).package;
  fs = lib.fileset;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  src = fs.toSource {
    root = ../..;
    fileset = fs.unions [
      ../../Cargo.toml
      ../../Cargo.lock
      ../../README.md
      ../../src
      (fs.maybeMissing ../../tests)
      (fs.maybeMissing ../../benches)
      ../../xen/examples
    ];
  };
  cargoLock.lockFile = ../../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # The test suite needs what the Nix build sandbox does not give: ptys,
  # user namespaces, mke2fs/sfdisk images and a Xen PV kernel in /boot.
  # The project's CI runs it (`cargo test`).
  doCheck = false;

  # Man pages and completions come from the built binary's clap
  # definitions (`nixboot generate-assets DIR`, hidden from --help).
  postInstall =
    lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
      $out/bin/nixboot generate-assets assets
      installManPage assets/man/*.1
      installShellCompletion --cmd nixboot \
        --bash assets/completions/nixboot.bash \
        --zsh assets/completions/_nixboot \
        --fish assets/completions/nixboot.fish
    ''
    + ''
      install -Dm644 -t $out/share/doc/nixboot README.md
      install -Dm644 -t $out/share/doc/nixboot/examples xen/examples/*
    '';

  meta = {
    inherit (manifest) description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "nixboot";
    platforms = lib.platforms.linux;
  };
}
