# nixboot's NixOS module for a NixOS *dom0*:
#
#   imports = [ ./path/to/nixboot/xen/nix/dom0.nix ];
#   programs.nixboot.enable = true;
#
# puts nixboot on the system path; domain configurations then say
# bootloader = "/run/current-system/sw/bin/nixboot". With
# programs.nixboot.restrictedMode.enable it also creates the user libxl's
# restricted mode takes uids from (xen-qemuuser-range-base, uid 65536: the
# boot loader of domain N runs as 65536 + N, at most 98287). Enable restricted mode
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
  # The uid range libxl uses is [baseUid, baseUid + 32751] (domids stay
  # below DOMID_FIRST_RESERVED, 0x7ff0). It must belong to nobody else:
  # libxl refuses a uid that is another user's, and a uid that lies in a
  # user's subuid range lets that user's rootless containers act as the
  # boot loader of a domain (signal it, ptrace it, read its files).
  # NixOS gives every normal user an automatic subuid range at
  # 100000 + k * 65536 (update-users-groups.pl, k = 0, 1, ... with no
  # practical upper bound), so every uid from 100000 up may belong to one;
  # Debian's useradd allocates the same way (SUB_UID_MIN 100000). The old
  # base 131072 was the first user's range. The only room is below 100000:
  # 65536 + 32751 = 98287, above NixOS's normal users (1000-29999), nixbld
  # (30000+), systemd-homed (60001-60513), DynamicUser (61184-65519) and
  # nobody (65534), and below every subuid range and systemd-nspawn's
  # container uids (524288 and up).
  baseUid = 65536;
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
        users.groups.${base}.gid = baseUid;
        users.users.${base} = {
          isSystemUser = true;
          uid = baseUid;
          group = base;
          description = "Base of the uid range for deprivileged Xen boot loaders";
        };
      })
    ]
  );
}
