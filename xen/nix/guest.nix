# nixboot's NixOS module for the *guest*: a NixOS Xen PV domU that dom0
# boots with `bootloader = "/usr/bin/nixboot"`.
#
#   imports = [ ./path/to/nixboot/xen/nix/guest.nix ];
#
# It gives the initrd the Xen PV front-end drivers and the kernel the Xen
# console, turns GRUB off, and registers nixboot as the boot loader through
# boot.loader.external. Then `nixos-rebuild switch|boot` no longer warns
# "do not know how to make this configuration bootable": its install hook
# records the configuration being installed, with the menu settings, in
# /nix/var/nix/nixboot.json, which nixboot reads from dom0 at the next
# boot (see install-hook.sh). That captures the two cases the system
# profile gets wrong: `nixos-rebuild switch --specialisation X` and
# `/nix/var/nix/profiles/system-N-link/bin/switch-to-configuration boot`.
#
# Options used: boot.loader.timeout (the menu countdown in seconds; null
# waits for a key, which nixboot bounds to 60 s) and
# boot.loader.nixboot.configurationLimit (newest generations in the menu).
# boot.initrd.secrets works: boot.loader.external leaves
# boot.loader.supportsInitrdSecrets false, so NixOS copies the secrets into
# the initrd itself when it builds it (stage-1.nix; systemd/initrd-secrets.nix
# for systemd stage 1) -- note that this puts them in the Nix store. The
# bootspec extension "org.nixboot.guest.v1" tells nixboot so: it warns about
# an initrdSecrets appender only in generations built without this module.
{ config, lib, pkgs, ... }:

let
  cfg = config.boot.loader.nixboot;
  json = v: lib.escapeShellArg (builtins.toJSON v);
  installHook = pkgs.writeShellScript "nixboot-install-hook" ''
    export PATH=${lib.makeBinPath [ pkgs.coreutils ]}
    exec ${pkgs.bash}/bin/bash ${./install-hook.sh} ${json config.boot.loader.timeout} ${json cfg.configurationLimit} "$@"
  '';
in
{
  options.boot.loader.nixboot = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether this guest is booted by nixboot from dom0 (the default
        once this module is imported): GRUB off, the Xen PV drivers in the
        initrd, console=hvc0, and an install hook that records the boot
        default for nixboot.
      '';
    };
    configurationLimit = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      example = 20;
      description = ''
        How many of the newest generations nixboot's console menu shows
        (the installed default is always shown). null shows them all. Like
        GRUB's configurationLimit, it limits the menu only: old generations
        stay bootable with --entry until they are garbage-collected.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    boot.loader.grub.enable = false;
    boot.loader.external = {
      enable = true;
      inherit installHook;
    };
    # Read by nixboot from boot.json: whether boot.initrd.secrets are already
    # in the initrd (true unless something forces supportsInitrdSecrets on,
    # which no dom0 loader can honour).
    boot.bootspec.extensions."org.nixboot.guest.v1" = {
      initrdSecretsInInitrd = !config.boot.loader.supportsInitrdSecrets;
    };

    # What nixpkgs' virtualisation/xen-domU.nix gives a PV guest, without
    # its GRUB and syslogd settings: the front-end drivers in the initrd
    # (xen-blkfront finds the root disk) and the Xen console.
    boot.initrd.kernelModules = [
      "xen-blkfront"
      "xen-netfront"
      "xen-kbdfront"
      "xen-fbfront"
      "xen-tpmfront"
      "xen-pcifront"
      "xen-scsifront"
    ];
    boot.kernelParams = [ "console=hvc0" ];
    # dom0 keeps the clock of a PV guest (as xen-domU.nix).
    services.timesyncd.enable = lib.mkDefault false;
  };
}
