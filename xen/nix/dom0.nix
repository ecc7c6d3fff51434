# nixboot's NixOS module for a NixOS *dom0*:
#
#   imports = [ ./path/to/nixboot/xen/nix/dom0.nix ];
#   programs.nixboot.enable = true;
#
# puts nixboot on the system path; domain configurations then say
# bootloader = "/run/current-system/sw/bin/nixboot". With
# programs.nixboot.restrictedMode.enable it also creates the user libxl's
# restricted mode takes uids from (xen-qemuuser-range-base, uid 131072:
# the boot loader of domain N runs as 131072 + N). Enable restricted mode
# itself with bootloader_restrict = 1 in the domain configuration or
# xl.conf (Xen 4.18 and later), or LIBXL_BOOTLOADER_RESTRICT=1 in xl's
# environment.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.programs.nixboot;
  base = "xen-qemuuser-range-base";
in
{
  options.programs.nixboot = {
    enable = lib.mkEnableOption "nixboot, the Xen PV boot loader for NixOS guests";
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The nixboot package.";
    };
    restrictedMode.enable = lib.mkEnableOption "the ${base} user libxl's restricted boot loader mode needs";
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      { environment.systemPackages = [ cfg.package ]; }
      (lib.mkIf cfg.restrictedMode.enable {
        users.groups.${base}.gid = 131072;
        users.users.${base} = {
          isSystemUser = true;
          uid = 131072;
          group = base;
          description = "Base of the uid range for deprivileged Xen boot loaders";
        };
      })
    ]
  );
}
