# Install the setevnt agent on a Windows client from the offline bundle (no network).
#
# Run in an elevated PowerShell from the unpacked bundle:
#   powershell -ExecutionPolicy Bypass -File install.ps1 -Config C:\path\to\pc042-agent.toml
#
# 1. a virtual environment in -Prefix (default %ProgramFiles%\setevnt) from -Python
# 2. the agent and its dependencies from .\wheels only (pip --no-index)
# 3. pywin32's post-install step (the service host needs its DLLs)
# 4. %ProgramData%\setevnt for SYSTEM and Administrators only, and -Config copied there
#    as agent.toml (the file `setevnt-dispatcher enroll` wrote for this client)
# 5. `setevnt-agent check`, then the service installed, set to restart when it fails,
#    and started (-NoService: not)
# Not run on a real Windows machine by the project's tests: see docs/windows.md.

#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [string]$Config = "",
    [string]$Python = "py",
    [string]$PythonVersion = "3.11",
    [string]$Prefix = (Join-Path $env:ProgramFiles "setevnt"),
    [switch]$NoService
)

$ErrorActionPreference = "Stop"
$Here = Split-Path -Parent $MyInvocation.MyCommand.Path
$Data = Join-Path $env:ProgramData "setevnt"
$Agent = Join-Path $Prefix "Scripts\setevnt-agent.exe"
$VenvPython = Join-Path $Prefix "Scripts\python.exe"

function Invoke-Step([string]$What, [scriptblock]$Action) {
    Write-Host "setevnt: $What"
    & $Action
    if ($LASTEXITCODE -ne 0) { throw "setevnt: $What failed (exit $LASTEXITCODE)" }
}

if ($Python -eq "py") {
    Invoke-Step "virtual environment in $Prefix" { & py "-$PythonVersion" -m venv $Prefix }
} else {
    Invoke-Step "virtual environment in $Prefix" { & $Python -m venv $Prefix }
}
Invoke-Step "install from the bundle" {
    & $VenvPython -m pip install --no-index --find-links (Join-Path $Here "wheels") setevnt
}
Invoke-Step "pywin32 post-install" {
    & $VenvPython (Join-Path $Prefix "Scripts\pywin32_postinstall.py") -install -quiet
}

New-Item -ItemType Directory -Force -Path $Data | Out-Null
# The same ACL the agent gives the directories it creates (agent/windows/acl.py).
Invoke-Step "restrict $Data to SYSTEM and Administrators" {
    & icacls $Data /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F"
}
if ($Config) {
    Copy-Item -Path $Config -Destination (Join-Path $Data "agent.toml") -Force
} elseif (-not (Test-Path (Join-Path $Data "agent.toml"))) {
    Copy-Item -Path (Join-Path $Here "agent.example.toml") -Destination (Join-Path $Data "agent.toml")
    Write-Warning "setevnt: $Data\agent.toml is the example: fill it in (or pass -Config), then run install.ps1 again"
    exit 1
}

Invoke-Step "check the configuration" { & $Agent check }
if (-not $NoService) {
    Invoke-Step "install the service" { & $Agent service install }
    # Started again when it fails, as systemd's Restart=on-failure does: the agent's
    # watchdog ends the process (status 75) when its broker loop stops coming back.
    Invoke-Step "restart the service when it fails" {
        & sc.exe failure setevnt-agent reset= 86400 actions= restart/5000/restart/5000/restart/60000
    }
    Invoke-Step "start the service" { & $Agent service start }
}
Write-Host "setevnt: done; the agent logs to the Application event log (source setevnt-agent)"
