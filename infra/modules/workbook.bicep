// The operator's workbook (Microsoft.Insights/workbooks@2023-06-01, the current GA version),
// linked to the Application Insights component: users per stage, throughput and latency,
// failures by reason, shortages, role changes and held plans, Graph throttling, leavers
// (steps, held cycles, licences kept, units returned per SKU and month). Its content
// is infra/monitoring/workbook.json; tests/unit/test_kql.py runs each of its queries against the
// events of a lab run.

param location string
param tags object = {}

@description('Resource id of the Application Insights component the workbook reads.')
param appInsightsId string

@description('Name shown in the portal.')
param displayName string = 'O365 provisioning'

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsightsId, 'o365prov-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsightsId
    version: 'Notebook/1.0'
    serializedData: replace(loadTextContent('../monitoring/workbook.json'), '{appInsightsId}', appInsightsId)
  }
}

output id string = workbook.id
