// O365 Provisioning Service: everything one environment needs, deployed by `azd up` (or
// `az deployment sub create`). One resource group, one user-assigned identity used for every
// Azure call, no passwords in parameters: the three service-account passwords are set in Key
// Vault after deployment (docs/deployment.md) and reach the app as Key Vault references.

targetScope = 'subscription'

@description('azd environment name; names the resource group and tags every resource.')
@minLength(1)
@maxLength(40)
param environmentName string

@description('Azure region for every resource.')
param location string

@description('Object id of the operator running the deployment (azd sets AZURE_PRINCIPAL_ID); gets Key Vault Secrets Officer to set the passwords. Empty for none.')
param principalId string = ''

@description('Kind of principal principalId is: azd sets AZURE_PRINCIPAL_TYPE (ServicePrincipal when it signed in as one, as in a pipeline), main.parameters.json passes it on.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('default: create the Key Vault, or update it. recover: recover the vault of this environment that `azd down` left soft-deleted (purge protection keeps it, and its name, for 90 days), secrets included; set it for that one `azd up`, then back to default (docs/deployment.md, "Taking an environment down and up again").')
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'

// ---- hosting -----------------------------------------------------------------------------

@description('flex: Flex Consumption (default; scales to zero but for the poll timer\'s always-ready instances). dedicated: an App Service plan (dedicatedSku), always on.')
@allowed([
  'flex'
  'dedicated'
])
param hosting string = 'flex'

@description('App Service plan SKU when hosting is dedicated.')
@allowed([
  'P0v3'
  'P1v3'
  'P2v3'
  'P3v3'
  'S1'
  'S2'
  'S3'
  'B1'
  'B2'
  'B3'
])
param dedicatedSku string = 'P0v3'

@description('Flex: always-ready instances kept for the poll timer (0 lets it scale to zero).')
@minValue(0)
param alwaysReadyInstances int = 1

@description('How the app reaches Exchange and the domain controllers: relay (Azure Relay hybrid connections, a bridge on premises, outbound 443 only) or vnet (regional VNet integration over a site-to-site VPN or ExpressRoute).')
@allowed([
  'relay'
  'vnet'
])
param connectivity string = 'relay'

@description('Subnet resource id for VNet integration (delegated to Microsoft.App/environments for Flex Consumption, Microsoft.Web/serverFarms for dedicated; with the Microsoft.KeyVault service endpoint, and Microsoft.Storage on dedicated). Required when connectivity is vnet: the deployment stops without it.')
param vnetSubnetId string = ''

@description('Flex Consumption with connectivity vnet: resource id of a second subnet of the same VNet, not delegated, for the private endpoints of the storage account (blob, queue, table). Required then: the deployment stops without it. Unused otherwise.')
param privateEndpointSubnetId string = ''

@description('Object id of the principal the on-premises bridge (azbridge) signs in as; gets Azure Relay Listener on the hybrid connections. Empty: assign it later.')
param bridgePrincipalId string = ''

// ---- on-premises endpoints -----------------------------------------------------------------

@description('Exchange server host name as the app resolves it; the certificate on the WinRM/PowerShell endpoint must carry this name.')
param exchangeHost string

@description('Exchange remote PowerShell port: the IIS /PowerShell virtual directory answers on 443 (docs/premises.md).')
param exchangePort int = 443

@description('Path of the Exchange PowerShell endpoint.')
param exchangePath string = '/PowerShell'

@description('Comma-separated domain controller host names (LDAPS). One hybrid connection is made for each; AD_URL and RELAY_AD_PATH list them in this order.')
@minLength(1)
param domainControllers string

@description('LDAPS port on the domain controllers.')
param ldapsPort int = 636

// ---- service settings (see docs/configuration.md for every setting) ---------------------------

@description('Base DN of the directory, e.g. DC=contoso,DC=com.')
param adBaseDn string

@description('AD service account (DOMAIN\\name, UPN or DN).')
param adUser string

@description('Exchange service account (DOMAIN\\name or UPN).')
param exchangeUser string

@description('Exchange authentication: basic (over HTTPS; the /PowerShell virtual directory\'s Windows authentication needs Kerberos, which the app cannot get through the relay: docs/premises.md), negotiate, ntlm or kerberos.')
@allowed([
  'negotiate'
  'ntlm'
  'kerberos'
  'basic'
])
param exchangeAuth string = 'basic'

@description('Concurrent Exchange PowerShell sessions per instance (EXCHANGE_SESSIONS).')
@minValue(1)
@maxValue(18)
param exchangeSessions int = 4

@description('Most Exchange PowerShell sessions of the whole app (EXCHANGE_SESSIONS_APP_MAX), under Exchange\'s 18 per account (PowerShellMaxConcurrency) with room for an administrator\'s own shell; Flex\'s instance limit is this divided by exchangeSessions.')
@minValue(1)
@maxValue(18)
param exchangeSessionsAppMax int = 16

@description('Object id of the operators\' Entra group: queue and table data rights on the storage account and Key Vault Secrets User, enough for status, user, retry, plan and pause (docs/permissions.md, "Operators"). Empty for none.')
param operatorGroupObjectId string = ''

@description('Settings the deployment does not set otherwise ("deployed: no" in docs/configuration.md), as a JSON object of setting name to value: azd env set APP_SETTINGS \'{"SYNC_DEADLINE_HOURS": "48"}\'. Applied last, so it can also override what the parameters set.')
param appSettingsJson string = ''

@description('Remote routing domain, <tenant>.mail.onmicrosoft.com.')
param routingDomain string

@description('Group whose members are provisioned.')
param provisionGroup string = 'O365_Provision'

@description('Group holding users waiting for a licence.')
param licenseGroup string = 'O365_License'

@description('AD attribute naming the licence.')
param licenseAttribute string = 'extensionAttribute1'

@description('AD attribute holding the two-letter country (usageLocation).')
param countryAttribute string = 'c'

@description('Licence name in the AD attribute to SKU part number.')
param licenseMap object = {
  E3: 'ENTERPRISEPACK'
  'Exchange 2': 'EXCHANGEENTERPRISE'
}

@description('Which SKUs the licence step replaces (LICENSE_REPLACE): managed, only those LICENSE_MAP names (add-ons such as Teams Phone or Power BI are kept); all, every other SKU, as the old script did.')
@allowed([
  'managed'
  'all'
])
param licenseReplace string = 'managed'

@description('How reports and alerts are sent.')
@allowed([
  'graph'
  'smtp'
  'none'
])
param mailTransport string = 'graph'

@description('From address (a mailbox when mailTransport is graph).')
param mailSender string = ''

@description('Comma-separated recipients of reports and alerts.')
param mailTo string = ''

@description('SMTP relay host (mailTransport smtp).')
param smtpHost string = ''

@description('SMTP port (mailTransport smtp).')
param smtpPort int = 587

@description('SMTP user (mailTransport smtp); its password is the smtp-password secret.')
param smtpUser string = ''

@description('Turn on admin-role sync from AD groups.')
param rolesEnabled bool = false

@description('OU holding the role groups (rolesEnabled).')
param rolesOu string = ''

@description('AD group name to Entra role template id (rolesEnabled).')
param rolesGroupMap object = {}

@description('Roles the tenant marks privileged that may follow AD anyway (ROLES_PRIVILEGED_OPT_IN), comma-separated display names or template ids.')
param rolesPrivilegedOptIn string = ''

@description('Comma-separated object ids or UPNs of break-glass accounts the role sync never touches.')
param rolesBreakGlassIds string = ''

@description('active: role assignments; eligible: PIM eligibility.')
@allowed([
  'active'
  'eligible'
])
param rolesMode string = 'active'

@description('Absolute path of a PEM bundle of extra CAs (the internal CA that issued the DC and Exchange certificates), shipped with the app package; empty for none.')
param caBundlePath string = ''

@description('Log level of the service.')
@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
])
param logLevel string = 'INFO'

// ---- monitoring (docs/operations.md, "Alerts in Azure Monitor") ---------------------------

@description('Address the alert rules mail (an action group). Empty: the first address of mailTo; both empty: no alert rules.')
param alertEmail string = ''

@description('Minutes between two polls, as pollSchedule says (1 for a poll every minute or more often, as the default every 15 s): the no-poll alert fires after 30 minutes without a successful poll (1 hour above 10, 3 hours above 20).')
@minValue(1)
@maxValue(60)
param pollIntervalMinutes int = 1

@description('The function-failures alert fires for a function above this share of failed invocations (percent) ...')
@minValue(1)
@maxValue(100)
param functionFailurePercent int = 10

@description('... with at least this many failures in 15 minutes.')
@minValue(1)
param functionFailureMinimum int = 3

@description('opentelemetry: the Functions host and the Python worker send telemetry through OpenTelemetry (the service\'s events with their fields as customDimensions, which the alerts and the workbook read). applicationinsights: the host\'s own Application Insights integration only (events arrive as text without their fields).')
@allowed([
  'opentelemetry'
  'applicationinsights'
])
param telemetryMode string = 'opentelemetry'

// ---- sync trigger (docs/configuration.md, SYNC_TRIGGER) -------------------------------------

@description('Ask for the sync after the mailbox step: none, connect (Start-ADSyncSyncCycle on the Entra Connect server) or cloud-sync (provisionOnDemand).')
@allowed([
  'none'
  'connect'
  'cloud-sync'
])
param syncTrigger string = 'none'

@description('Entra Connect server host name (syncTrigger connect); its WinRM HTTPS certificate must carry this name. Its password is the connect-password secret.')
param connectHost string = ''

@description('Account allowed on the Connect server\'s constrained endpoint (syncTrigger connect).')
param connectUser string = ''

@description('Cloud Sync agent: service principal object id, synchronization job id and rule id (syncTrigger cloud-sync).')
param cloudSyncServicePrincipalId string = ''
param cloudSyncJobId string = ''
param cloudSyncRuleId string = ''

@description('How long after the mailbox step the licence step first looks (about one delta cycle).')
param syncWaitSeconds int = 60

@description('NCRONTAB schedules (six fields, seconds first, UTC).')
param pollSchedule string = '*/15 * * * * *'
param reconcileSchedule string = '0 30 * * * *'
param reportSchedule string = '0 0 7 * * *'
param rolesSchedule string = '0 */15 * * * *'
param leaversSchedule string = '0 */15 * * * *'

@description('The AD group whose members are leavers: shared mailbox, licence back (docs/operations.md).')
param leaversGroup string = 'O365_Leavers'

// ---- names -------------------------------------------------------------------------------------

var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var useRelay = connectivity == 'relay'

// connectivity=vnet without a subnet would deploy an app that cannot reach the premises, with
// storage and the vault open to every network. Stop instead, before anything is created: ARM
// evaluates only the branch of if() its condition picks (Bicep's ?:), and json() of text that
// is not JSON makes the template invalid, naming this variable. The text interpolates a
// parameter so that the Bicep compiler cannot parse it ahead of ARM. (Bicep's fail() and assert
// are not in every Bicep release azd may bring.)
var ERROR_connectivity_vnet_needs_VNET_SUBNET_ID = connectivity == 'vnet' && empty(vnetSubnetId) ? json('connectivity=${connectivity} needs VNET_SUBNET_ID: azd env set VNET_SUBNET_ID <subnet resource id>') : vnetSubnetId
var vnetSubnet = useRelay ? '' : ERROR_connectivity_vnet_needs_VNET_SUBNET_ID
// On Flex Consumption the storage account is reached through private endpoints (it has no
// public endpoint in VNet mode; modules/storage.bicep), so their subnet is required as well,
// with the same kind of stop.
var ERROR_connectivity_vnet_on_flex_needs_PRIVATE_ENDPOINT_SUBNET_ID = connectivity == 'vnet' && hosting == 'flex' && empty(privateEndpointSubnetId) ? json('connectivity=${connectivity} with hosting=${hosting} needs PRIVATE_ENDPOINT_SUBNET_ID: azd env set PRIVATE_ENDPOINT_SUBNET_ID <resource id of a non-delegated subnet for private endpoints>') : privateEndpointSubnetId
var privateEndpointSubnet = useRelay || hosting != 'flex' ? '' : ERROR_connectivity_vnet_on_flex_needs_PRIVATE_ENDPOINT_SUBNET_ID
var alertAddress = !empty(alertEmail) ? alertEmail : trim(first(split(mailTo, ',')))
var otel = telemetryMode == 'opentelemetry'

var exchangeEndpoint = [
  {
    name: 'exchange'
    host: exchangeHost
    port: exchangePort
  }
]
var dcHosts = [for dc in split(domainControllers, ','): trim(dc)]
var dcEndpoints = [for (dc, i) in dcHosts: {
  name: 'ldaps-${i + 1}'
  host: dc
  port: ldapsPort
}]
var dcPaths = [for (dc, i) in dcHosts: 'ldaps-${i + 1}']
var connectEndpoint = syncTrigger == 'connect' ? [
  {
    name: 'connect'
    host: connectHost
    port: 5986
  }
] : []
var endpoints = concat(exchangeEndpoint, dcEndpoints, connectEndpoint)
var ldapUrls = [for dc in dcHosts: 'ldaps://${dc}:${ldapsPort}']

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-o365prov-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-o365prov-${token}'
    appInsightsName: 'appi-o365prov-${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-o365p-${take(token, 12)}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
    operatorGroupObjectId: operatorGroupObjectId
    createMode: keyVaultCreateMode
    allowedSubnetId: vnetSubnet
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'sto365p${take(token, 16)}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    // Flex: the platform, not the app subnet, writes the package into the deployments container,
    // so a subnet-only firewall blocks deployments; in VNet mode the account has no public
    // endpoint and is reached through private endpoints (docs/deployment.md). Dedicated keeps
    // the subnet rule.
    allowedSubnetId: hosting == 'flex' ? '' : vnetSubnet
    privateEndpointSubnetId: privateEndpointSubnet
    operatorGroupObjectId: operatorGroupObjectId
  }
}

module relay 'modules/relay.bicep' = if (useRelay) {
  name: 'relay'
  scope: rg
  params: {
    name: 'relay-o365prov-${token}'
    location: location
    tags: tags
    endpoints: endpoints
    senderPrincipalId: identity.outputs.principalId
    listenerPrincipalId: bridgePrincipalId
  }
}

// Secrets the operator sets after deployment (docs/deployment.md). Versionless URIs, so a new
// password version is picked up without redeploying.
var secretBase = '${keyVault.outputs.uri}secrets'

// Every app setting of shared/config/ that production needs; the rest keep their defaults
// and are listed as optional in docs/configuration.md. Flex Consumption sets the runtime in
// functionAppConfig and takes no FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION.
var appSettingsHost = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobServiceUri
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueServiceUri
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableServiceUri
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
}

// Telemetry through OpenTelemetry (docs/operations.md, "Telemetry"): the host in OpenTelemetry
// mode (set here rather than in host.json, so that `func start` keeps working locally), the
// Python worker running the Azure Monitor distro itself (which keeps the invocation's trace
// context and stops the host forwarding the worker's logs a second time). The distro's
// exporter signs in with the identity in APPLICATIONINSIGHTS_AUTHENTICATION_STRING. Storage
// calls (20 a user) and the urllib layers under requests are not traced as dependencies.
var appSettingsTelemetry = otel ? {
  AzureFunctionsJobHost__telemetryMode: 'OpenTelemetry'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: 'azure_sdk,urllib,urllib3,django,fastapi,flask,psycopg2'
} : {
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'false'
}

var appSettingsDedicated = hosting == 'dedicated' ? {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'python'
  SCM_DO_BUILD_DURING_DEPLOYMENT: 'true'
} : {}

// Through Azure Relay: one hybrid connection per endpoint, the token from the identity.
var appSettingsRelay = useRelay ? {
  EXCHANGE_TRANSPORT: 'relay'
  AD_TRANSPORT: 'relay'
  RELAY_NAMESPACE: relay.outputs.host
  RELAY_EXCHANGE_PATH: 'exchange'
  RELAY_AD_PATH: join(dcPaths, ',')
} : {
  EXCHANGE_TRANSPORT: 'direct'
  AD_TRANSPORT: 'direct'
}

var appSettingsService = {
  AZURE_CREDENTIAL: 'managed-identity'
  AZURE_CLIENT_ID: identity.outputs.clientId
  AZURE_TENANT_ID: tenant().tenantId
  KEY_VAULT_URL: keyVault.outputs.uri
  AD_URL: join(ldapUrls, ',')
  AD_BASE_DN: adBaseDn
  AD_USER: adUser
  AD_PASSWORD: '@Microsoft.KeyVault(SecretUri=${secretBase}/ad-password)'
  EXCHANGE_URL: 'https://${exchangeHost}:${exchangePort}${exchangePath}'
  EXCHANGE_USER: exchangeUser
  EXCHANGE_PASSWORD: '@Microsoft.KeyVault(SecretUri=${secretBase}/exchange-password)'
  EXCHANGE_AUTH: exchangeAuth
  EXCHANGE_SESSIONS: string(exchangeSessions)
  EXCHANGE_SESSIONS_APP_MAX: string(exchangeSessionsAppMax)
  ROUTING_DOMAIN: routingDomain
  PROVISION_GROUP: provisionGroup
  LICENSE_GROUP: licenseGroup
  LICENSE_ATTRIBUTE: licenseAttribute
  COUNTRY_ATTRIBUTE: countryAttribute
  LICENSE_MAP: string(licenseMap)
  LICENSE_REPLACE: licenseReplace
  MAIL_TRANSPORT: mailTransport
  MAIL_SENDER: mailSender
  MAIL_TO: mailTo
  ROLES_ENABLED: rolesEnabled ? 'true' : 'false'
  ROLES_OU: rolesOu
  ROLES_GROUP_MAP: string(rolesGroupMap)
  ROLES_BREAK_GLASS_IDS: rolesBreakGlassIds
  ROLES_MODE: rolesMode
  ROLES_PRIVILEGED_OPT_IN: rolesPrivilegedOptIn
  POLL_SCHEDULE: pollSchedule
  RECONCILE_SCHEDULE: reconcileSchedule
  REPORT_SCHEDULE: reportSchedule
  ROLES_SCHEDULE: rolesSchedule
  LEAVERS_SCHEDULE: leaversSchedule
  LEAVERS_GROUP: leaversGroup
  LOG_LEVEL: logLevel
}

var appSettingsSync = union({
  SYNC_TRIGGER: syncTrigger
  SYNC_WAIT_SECONDS: string(syncWaitSeconds)
}, syncTrigger == 'connect' ? {
  CONNECT_URL: 'https://${connectHost}:5986/wsman'
  CONNECT_USER: connectUser
  CONNECT_PASSWORD: '@Microsoft.KeyVault(SecretUri=${secretBase}/connect-password)'
  CONNECT_TRANSPORT: useRelay ? 'relay' : 'direct'
  RELAY_CONNECT_PATH: 'connect'
} : {}, syncTrigger == 'cloud-sync' ? {
  CLOUD_SYNC_SERVICE_PRINCIPAL_ID: cloudSyncServicePrincipalId
  CLOUD_SYNC_JOB_ID: cloudSyncJobId
  CLOUD_SYNC_RULE_ID: cloudSyncRuleId
} : {})

var appSettingsSmtp = (mailTransport == 'smtp') ? {
  SMTP_HOST: smtpHost
  SMTP_PORT: string(smtpPort)
  SMTP_USER: smtpUser
  SMTP_PASSWORD: '@Microsoft.KeyVault(SecretUri=${secretBase}/smtp-password)'
} : {}

var appSettingsCaBundle = empty(caBundlePath) ? {} : {
  CA_BUNDLE: caBundlePath
}

module app 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: 'func-o365prov-${token}'
    planName: 'plan-o365prov-${token}'
    location: location
    tags: tags
    hosting: hosting
    dedicatedSku: dedicatedSku
    alwaysReadyInstances: alwaysReadyInstances
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    identityId: identity.outputs.id
    appSettings: union(appSettingsHost, appSettingsTelemetry, appSettingsDedicated, appSettingsRelay, appSettingsService, appSettingsSync, appSettingsSmtp, appSettingsCaBundle, json(empty(appSettingsJson) ? '{}' : appSettingsJson))
    // The app-wide Exchange session bound (docs/configuration.md, EXCHANGE_SESSIONS_APP_MAX):
    // no more instances than exchangeSessionsAppMax / exchangeSessions, so that instances x
    // sessions never pass it. Flex: maximumInstanceCount limits the app's instances, whatever
    // function they run (per-function scaling shares it).
    maximumInstances: max(1, exchangeSessionsAppMax / exchangeSessions)
    vnetSubnetId: vnetSubnet
  }
}

module alerts 'modules/alerts.bicep' = if (!empty(alertAddress)) {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    actionGroupName: 'ag-o365prov-${token}'
    alertEmail: alertAddress
    pollIntervalMinutes: pollIntervalMinutes
    functionFailurePercent: functionFailurePercent
    functionFailureMinimum: functionFailureMinimum
    relayNamespaceId: useRelay ? relay.outputs.id : ''
  }
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URL string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_RELAY_NAMESPACE string = useRelay ? relay.outputs.name : ''
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
