{
  description = "BetCycle: a self-hosted software delivery platform in one binary";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # `nix build`, `nix run . -- serve`. Self-update is compiled out: Nix updates it.
      packages = forAllSystems (pkgs: rec {
        betcycle = pkgs.callPackage ./nix/package.nix { };
        default = betcycle;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.betcycle}/bin/betcycle";
        };
      });

      # `nix develop`: the toolchain and what the tests drive (git, Chromium, promtool).
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.betcycle ];
          packages = with pkgs; [
            cargo
            rustc
            rustfmt
            clippy
            cargo-nextest
            git
            chromium
            chromedriver
            prometheus
          ];
        };
      });

      overlays.default = final: prev: {
        betcycle = final.callPackage ./nix/package.nix { };
      };

      # `services.betcycle` for NixOS; brings the overlay so the package resolves.
      nixosModules.default = { ... }: {
        imports = [ ./nix/module.nix ];
        nixpkgs.overlays = [ self.overlays.default ];
      };
      nixosModules.betcycle = self.nixosModules.default;
    };
}
