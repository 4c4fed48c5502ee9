# services.betcycle: BetCycle as a hardened systemd service on NixOS.
#
#   services.betcycle = {
#     enable = true;
#     listen = "0.0.0.0:8080";
#     openFirewall = true;
#     settings.public_url = "https://ci.example.com";
#   };
{ config, lib, pkgs, ... }:

let
  cfg = config.services.betcycle;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "betcycle.toml" cfg.settings;
  port = lib.toInt (lib.last (lib.splitString ":" cfg.listen));
in
{
  options.services.betcycle = {
    enable = lib.mkEnableOption "BetCycle, a self-hosted software delivery platform";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.betcycle;
      defaultText = lib.literalExpression "pkgs.betcycle";
      description = "The BetCycle package (the flake's overlay provides it).";
    };

    dataDir = lib.mkOption {
      type = lib.types.path;
      default = "/var/lib/betcycle";
      description = "Where the database, logs, artifacts and the master key live.";
    };

    listen = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1:8080";
      example = "0.0.0.0:8080";
      description = "Address and port the HTTP server binds.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the listening port in the firewall.";
    };

    settings = lib.mkOption {
      type = settingsFormat.type;
      default = { };
      example = lib.literalExpression ''{ public_url = "https://ci.example.com"; run_concurrency = 4; }'';
      description = "betcycle.toml settings; docs/configuration.md lists every option.";
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "A file of BETCYCLE_* variables kept out of the Nix store (TLS paths, *_FILE secrets).";
    };

    path = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = with pkgs; [ bash coreutils git gnugrep gnused gnutar gzip ];
      defaultText = lib.literalExpression "with pkgs; [ bash coreutils git gnugrep gnused gnutar gzip ]";
      description = "Programs on the PATH of pipeline steps and deployments.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.betcycle = {
      isSystemUser = true;
      group = "betcycle";
      home = cfg.dataDir;
    };
    users.groups.betcycle = { };

    systemd.tmpfiles.rules = [ "d ${cfg.dataDir} 0700 betcycle betcycle - -" ];

    systemd.services.betcycle = {
      description = "BetCycle software delivery platform";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      path = cfg.path;
      environment = {
        BETCYCLE_DATA_DIR = toString cfg.dataDir;
        BETCYCLE_LISTEN = cfg.listen;
        BETCYCLE_CONFIG = "${configFile}";
        BETCYCLE_MANAGED_BY = "NixOS";
      };
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = "30s";
        ExecStart = "${lib.getExe cfg.package} serve";
        User = "betcycle";
        Group = "betcycle";
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
        Restart = "on-failure";
        RestartSec = "2s";
        KillMode = "process";
        TimeoutStopSec = "60s";
        UMask = "0077";
        ReadWritePaths = [ cfg.dataDir ];
        # Hardening that still lets pipeline steps (ordinary child processes) run; see
        # systemd/betcycle.service for what is left off and why.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictSUIDSGID = true;
        RestrictRealtime = true;
        LockPersonality = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        CapabilityBoundingSet = "";
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
        LimitNOFILE = 65536;
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ port ];
  };
}
