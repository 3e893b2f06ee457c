// The Functions app: Linux, Python 3.11, on a plan that supports hybrid connections (Premium
// v3, Standard, Basic or Elastic Premium; Consumption and Flex Consumption do not). HTTPS only,
// FTP and basic publishing credentials off, TLS 1.2. Key Vault references resolve with the
// user-assigned identity. On-premises endpoints are reached either through hybrid connections
// (one per endpoint) or through regional VNet integration.

param name string
param planName string
param location string
param tags object = {}

@description('Plan SKU. EP* is Elastic Premium (needs an Azure Files content share); the others are Dedicated.')
param planSku string

@description('Resource id of the user-assigned identity.')
param identityId string

@description('App settings as an object: setting name to value.')
param appSettings object

@description('Subnet for regional VNet integration; empty when hybrid connections are used.')
param vnetSubnetId string = ''

@description('Relay namespace holding the hybrid connections; empty with VNet integration.')
param relayNamespaceName string = ''

@description('Hybrid connection endpoints: [{ name: string, host: string, port: int }].')
param endpoints array = []

var elastic = startsWith(planSku, 'EP')
var tiers = {
  EP1: 'ElasticPremium'
  EP2: 'ElasticPremium'
  EP3: 'ElasticPremium'
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

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  #checkov:skip=CKV_AZURE_225:Zone redundancy needs three instances; not worth it for a batch service whose state is in AD and storage
  name: planName
  location: location
  tags: tags
  kind: elastic ? 'elastic' : 'linux'
  sku: {
    name: planSku
    tier: tiers[planSku]
  }
  properties: {
    reserved: true
    maximumElasticWorkerCount: elastic ? 3 : null
  }
}

resource site 'Microsoft.Web/sites@2023-12-01' = {
  #checkov:skip=CKV_AZURE_17:The app has no HTTP triggers, so there is no caller to present a client certificate
  #checkov:skip=CKV_AZURE_213:No HTTP endpoint to probe; the host's health shows in Application Insights and the alerts in docs/operations.md
  #checkov:skip=CKV_AZURE_222:azd deploys over the SCM endpoint with an Entra token; the app serves no public HTTP traffic
  #checkov:skip=CKV_AZURE_212:One instance suffices for a service that polls AD every few minutes; queued work survives a restart
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
    siteConfig: {
      linuxFxVersion: 'Python|3.11'
      alwaysOn: !elastic
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      remoteDebuggingEnabled: false
      vnetRouteAllEnabled: !empty(vnetSubnetId)
      appSettings: settingsList
    }
  }
}

resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// One relay per endpoint. The send key is read from the connection's send-only rule at deploy
// time; App Service stores it and presents it to Azure Relay. Relay accepts only SAS keys here.
resource relays 'Microsoft.Web/sites/hybridConnectionNamespaces/relays@2023-12-01' = [for endpoint in endpoints: if (!empty(relayNamespaceName)) {
  name: '${site.name}/${relayNamespaceName}/${endpoint.name}'
  properties: {
    serviceBusNamespace: relayNamespaceName
    serviceBusSuffix: '.servicebus.windows.net'
    relayName: endpoint.name
    relayArmUri: resourceId('Microsoft.Relay/namespaces/hybridConnections', relayNamespaceName, endpoint.name)
    hostname: endpoint.host
    port: endpoint.port
    sendKeyName: 'app-send'
    sendKeyValue: listKeys(resourceId('Microsoft.Relay/namespaces/hybridConnections/authorizationRules', relayNamespaceName, endpoint.name, 'app-send'), '2021-11-01').primaryKey
  }
}]

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
