# `nix-build xen/nix` builds nixboot for dom0 (see package.nix).
{
  pkgs ? import <nixpkgs> { },
}:
pkgs.callPackage ./package.nix { }
