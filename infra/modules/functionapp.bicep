// The Functions app: Linux, Python 3.11, HTTPS only, FTP and basic publishing credentials off,
// TLS 1.2; Key Vault references resolve with the user-assigned identity. What Flex Consumption
// refuses or ignores is checked by tests/repo/test_infra_types.py (FLEX_RULES).
//
// hosting = 'flex' (default): the Flex Consumption plan ("Azure Functions Flex Consumption plan
// hosting", learn.microsoft.com, azure-functions/flex-consumption-plan). The package is deployed
// to a blob container read with the managed identity (no storage key anywhere), the runtime is
// set in functionAppConfig (Flex takes no FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION
// app settings), and functions scale one by one; the poll timer keeps always-ready instances so
// its five-minute schedule never waits for a cold start. Flex supports VNet integration.
// hosting = 'dedicated': an App Service plan (Premium v3, Standard or Basic), always on.
// Neither uses App Service Hybrid Connections (Windows only): the app opens Azure Relay streams
// itself (modules/relay.bicep), or reaches the premises through VNet integration.

param name string
param planName string
param location string
param tags object = {}

@description('flex (Flex Consumption, default) or dedicated (an App Service plan).')
@allowed([
  'flex'
  'dedicated'
])
param hosting string = 'flex'

@description('App Service plan SKU when hosting is dedicated.')
param dedicatedSku string = 'P0v3'

@description('Resource id of the user-assigned identity.')
param identityId string

@description('App settings as an object: setting name to value.')
param appSettings object

@description('Subnet for regional VNet integration; empty when the app goes through Azure Relay.')
param vnetSubnetId string = ''

@description('Flex: blob container URL the package is deployed to (read with the identity).')
param deploymentContainerUrl string = ''

@description('Flex: always-ready instances for the poll timer (0 lets it scale to zero).')
@minValue(0)
param alwaysReadyInstances int = 1

@description('Flex: most instances of the app (functionAppConfig.scaleAndConcurrency.maximumInstanceCount, "the maximum number of instances for the function app"); main.bicep derives it from the Exchange session bound.')
@minValue(1)
param maximumInstances int = 10

var flex = hosting == 'flex'
var tiers = {
  B1: 'Basic'
  B2: 'Basic'
  B3: 'Basic'
  S1: 'Standard'
  S2: 'Standard'
  S3: 'Standard'
  P0v3: 'PremiumV3'
  P1v3: 'PremiumV3'
  P2v3: 'PremiumV3'
  P3v3: 'PremiumV3'
}
var settingsList = [for setting in items(appSettings): {
  name: setting.key
  value: string(setting.value)
}]
var flexConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: deploymentContainerUrl
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: identityId
      }
    }
  }
  scaleAndConcurrency: {
    maximumInstanceCount: maximumInstances
    instanceMemoryMB: 2048
    alwaysReady: alwaysReadyInstances > 0 ? [
      {
        name: 'function:poll_provision_group'
        instanceCount: alwaysReadyInstances
      }
    ] : []
  }
  runtime: {
    name: 'python'
    version: '3.11'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  #checkov:skip=CKV_AZURE_225:Zone redundancy needs three instances; not worth it for a batch service whose state is in AD and storage
  name: planName
  location: location
  tags: tags
  kind: flex ? 'functionapp' : 'linux'
  sku: flex ? {
    name: 'FC1'
    tier: 'FlexConsumption'
  } : {
    name: dedicatedSku
    tier: tiers[dedicatedSku]
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  #checkov:skip=CKV_AZURE_17:The app has no HTTP triggers, so there is no caller to present a client certificate
  #checkov:skip=CKV_AZURE_213:No HTTP endpoint to probe; the host's health shows in Application Insights and the alerts in docs/operations.md
  #checkov:skip=CKV_AZURE_222:azd deploys with an Entra token (to the deployment container on Flex, over SCM on Dedicated); the app serves no public HTTP traffic
  #checkov:skip=CKV_AZURE_78:FTP is off on both plans: ftpsState Disabled on Dedicated; Flex Consumption refuses ftpsState (it supports no FTPS) and the ftp publishing-credentials policy is off
  #checkov:skip=CKV_AZURE_212:One instance suffices for a service that polls AD every few minutes; queued work survives a restart, and Flex scales out by itself
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(vnetSubnetId) ? null : vnetSubnetId
    functionAppConfig: flex ? flexConfig : null
    siteConfig: {
      // Dedicated only; null leaves a property out of the request. Flex Consumption refuses
      // alwaysOn and ftpsState (ARM error 51021, "site configuration properties ... for Flex
      // Consumption sites is invalid") and takes the runtime from functionAppConfig and the
      // network from the plan, not linuxFxVersion or vnetRouteAllEnabled: "Flex Consumption
      // plan deprecations", App settings reference for Azure Functions (learn.microsoft.com,
      // azure-functions/functions-app-settings). FTP stays off on Flex all the same: "FTPS not
      // supported" there, and the ftp publishing policy below is off.
      linuxFxVersion: flex ? null : 'Python|3.11'
      alwaysOn: flex ? null : true
      ftpsState: flex ? null : 'Disabled'
      vnetRouteAllEnabled: flex ? null : !empty(vnetSubnetId)
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: settingsList
    }
  }
}

resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
